"""The retry policy: transient I/O, network and lost-worker errors are retried, data and config errors never."""

from __future__ import annotations

import errno
from concurrent.futures.process import BrokenProcessPool

import pytest
from prefect.states import Failed

from tasks.infra.retry import is_transient, retry_on_transient


class ConnectError(Exception):
    """Stands in for httpx.ConnectError (matched by class name)."""


@pytest.mark.parametrize("exc", [
    ConnectionResetError("peer reset"), TimeoutError("read timed out"), OSError(errno.EIO, "I/O error"),
    BrokenProcessPool("a child process terminated abruptly"), ConnectError("connection refused"),
])
def test_transient_errors_are_retried(exc: BaseException) -> None:
    assert retry_on_transient(None, None, Failed(data=exc)) is True


@pytest.mark.parametrize("exc", [
    ValueError("the 'validation' split holds only label 0"), KeyError("slices"), NotImplementedError("JPEG-LS"),
    FileNotFoundError(errno.ENOENT, "no such file", "best.pt"), PermissionError(errno.EACCES, "denied"),
    OSError(errno.ENOSPC, "No space left on device"), RuntimeError("CUDA error: device-side assert"),
])
def test_data_config_and_other_errors_are_not_retried(exc: BaseException) -> None:
    assert retry_on_transient(None, None, Failed(data=exc)) is False


def test_cause_chain_is_followed() -> None:
    try:
        try:
            raise ConnectionRefusedError("scheduler gone")
        except ConnectionRefusedError as inner:
            raise RuntimeError("shard failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)
    assert not is_transient(None)


def test_every_task_with_retries_uses_the_policy() -> None:
    from prefect import Task

    import tasks.evaluate.steps
    import tasks.prepare.steps
    import tasks.train.steps

    tasks_with_retries = [obj for mod in (tasks.evaluate.steps, tasks.prepare.steps, tasks.train.steps)
                          for obj in vars(mod).values() if isinstance(obj, Task) and obj.retries]
    assert {t.name for t in tasks_with_retries} >= {"fit-model", "extract-shard", "predict-split", "group-cohorts"}
    for t in tasks_with_retries:
        assert t.retry_condition_fn is retry_on_transient, t.name
