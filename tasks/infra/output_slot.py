"""One pipeline run at a time per output root: a later run waits its turn instead of failing.

The nightly run and an ad-hoc retrain may start while the other is still writing into the
same output root. The output-folder lock (:mod:`tasks.core.files`) would stop the second one with
``OutputInUseError`` and lose the night; here the second one queues on a Prefect global
concurrency limit of one slot named after the output root, logs that it waits and for what,
and starts when the first one ends. The lock stays the last guard (a terminal run that
bypasses the server, a limit an operator raised by hand).

The slot is leased: a run whose process dies frees it when the lease (renewed while the run
lives) expires, so a killed worker never blocks the output root for good.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

#: Prefix of the per-output-root limits (``prefect gcl ls`` shows them).
SLOT_PREFIX = "tomoflow-output-"
#: Server errors survived while waiting for the slot, and the pause between tries.
_ACQUIRE_ATTEMPTS, _RETRY_SECONDS = 20, 10.0
#: How long the first, silent try for the slot lasts before the run says it waits.
_FIRST_TRY_SECONDS = 3.0


def slot_name(output_root: str | Path) -> str:
    """The concurrency limit's name for ``output_root``: the prefix and a hash of its resolved path.

    A hash, not the path: limit names are short and must not carry folder names into the
    server's tables; the path is logged beside it when a run waits.
    """
    digest = hashlib.sha256(str(Path(output_root).resolve()).encode()).hexdigest()[:16]
    return f"{SLOT_PREFIX}{digest}"


def ensure_limit(client: Any, name: str) -> int:
    """Create the one-slot limit ``name`` unless it exists; return the slots now held."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    try:
        return int(client.read_global_concurrency_limit_by_name(name).active_slots or 0)
    except ObjectNotFound:
        pass
    try:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1, active=True))
    except ObjectAlreadyExists:  # another run created it at the same moment
        pass
    return int(client.read_global_concurrency_limit_by_name(name).active_slots or 0)


@contextmanager
def output_root_slot(output_root: str | Path, logger: logging.Logger | logging.LoggerAdapter,
                     lease_seconds: float = 300) -> Iterator[str]:
    """Hold the output root's slot for the body; wait (and say so) while another run holds it.

    Args:
        output_root: The run's output root.
        logger: Where the wait is announced (the flow run's logger: it shows in the dashboard).
        lease_seconds: How long a dead holder keeps the slot (the lease is renewed while alive).

    Yields:
        The limit's name.
    """
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    from tasks.infra.prefect_internals import slot_acquisition_error

    name = slot_name(output_root)
    with get_client(sync_client=True) as client:
        ensure_limit(client, name)
    waited = False
    with ExitStack() as stack:
        for attempt in range(1, _ACQUIRE_ATTEMPTS + 1):
            try:
                if not waited:
                    # A short first try, so that a run which has to wait says so before it waits
                    # (reading the held slots first would race with a run starting at the same moment).
                    try:
                        stack.enter_context(concurrency(name, occupy=1, strict=True, lease_duration=lease_seconds,
                                                        timeout_seconds=_FIRST_TRY_SECONDS))
                        break
                    except TimeoutError:
                        waited = True
                        logger.warning("another tomoflow run is writing into the output root %s: this run waits "
                                       "its turn (concurrency limit %s) and starts when that run ends",
                                       output_root, name)
                stack.enter_context(concurrency(name, occupy=1, strict=True, lease_duration=lease_seconds))
                break
            except slot_acquisition_error() as exc:
                # Prefect retries a full slot (423) itself; a server error while waiting (503: its
                # database was busy) ends the wait, so wait again, a bounded number of times.
                if not _server_error(exc) or attempt == _ACQUIRE_ATTEMPTS:
                    raise
                logger.warning("the Prefect server answered %s while this run waited for the output root; "
                               "waiting again (%d of %d)", _server_error(exc), attempt, _ACQUIRE_ATTEMPTS)
                time.sleep(_RETRY_SECONDS)
        if waited:
            logger.info("the output root %s is free: this run goes on", output_root)
        yield name


def _server_error(exc: BaseException) -> int | None:
    """The 5xx status behind a failed slot acquisition, if that is what it was."""
    seen = 0
    while exc is not None and seen < 5:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(status, int) and status >= 500:
            return status
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None
