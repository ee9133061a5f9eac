"""The one retry policy of tomoflow's tasks: retry what a retry can fix, nothing else.

A retry helps when the failure came from outside the step: a flaky disk or network
share, a connection to the Prefect API or a Dask scheduler, a worker process that was
killed. It cannot help with a data or configuration error (a split that holds one label,
an unknown option, a missing weights file): those fail again, identically, after
wasting the retry delay and leaving duplicate progress artifacts. Every task that has
``retries`` passes :func:`retry_on_transient` as its ``retry_condition_fn``
(:func:`retry_policy` bundles the three options).
"""

from __future__ import annotations

import concurrent.futures
import errno
from typing import Any

#: Exceptions that say the input or the configuration is wrong: never retried, even
#: when they subclass a transient kind (``FileNotFoundError`` is an ``OSError``).
_PERMANENT: tuple[type[BaseException], ...] = (
    ValueError,  # includes pydantic's ValidationError and json's JSONDecodeError
    TypeError,
    KeyError,
    IndexError,
    NotImplementedError,
    AssertionError,
    FileNotFoundError,  # a missing input stays missing
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    FileExistsError,
)

#: ``OSError`` numbers that a second attempt cannot fix (a full disk, a read-only mount).
_PERMANENT_ERRNO = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG}

#: Class names of transient errors from optional libraries (matched by name, so that this
#: module imports neither httpx nor distributed).
_TRANSIENT_NAMES = {
    "BrokenProcessPool",  # a worker process of the extraction pool died
    "KilledWorker",  # distributed: the Dask worker running the task was lost
    "CommClosedError",  # distributed: the connection to the scheduler dropped
    "TransportError",  # httpx: connect, read and write errors and timeouts
    "RemoteProtocolError",
    "ReadTimeout",
    "ConnectError",
    "ConnectTimeout",
    "PoolTimeout",
}


def is_transient(exc: BaseException | None) -> bool:
    """Whether a retry could make ``exc`` go away (I/O, network, a lost worker).

    Args:
        exc: The exception a task raised (``None``: nothing to judge, no retry).

    Returns:
        True for ``ConnectionError``, ``TimeoutError``, other ``OSError`` (except missing
        files, permissions and a full or read-only disk), a broken process pool, a lost
        Dask worker and httpx transport errors, also when they are the cause of the
        exception raised; False for everything else.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _PERMANENT):
            return False
        if isinstance(exc, (ConnectionError, TimeoutError, concurrent.futures.BrokenExecutor)):
            return True
        if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__):
            return True
        if isinstance(exc, OSError):
            return exc.errno not in _PERMANENT_ERRNO
        exc = exc.__cause__ or exc.__context__
    return False


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only failures :func:`is_transient` accepts.

    Args:
        task: The Prefect task (unused; part of Prefect's signature).
        task_run: The task run (unused).
        state: The failed state; its data holds the raised exception.
    """
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            result = state.result(raise_on_failure=False)
        except Exception:  # an unreadable result says nothing about the cause
            return False
        exc = result if isinstance(result, BaseException) else None
    return is_transient(exc)


def retry_policy(retries: int = 2, delay_seconds: float = 1) -> dict[str, Any]:
    """Task options for ``@task(**retry_policy())``: retries only on transient errors."""
    return {"retries": retries, "retry_delay_seconds": delay_seconds, "retry_condition_fn": retry_on_transient}
