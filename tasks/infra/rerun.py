"""The rule "rerun when outputs are gone", in one place, for every cached step.

A cached Prefect task returns its stored result without running; when that result names
files someone has since deleted (an output folder cleaned by hand, a run folder's ``last.pt``
removed), handing the names on would fail later and further from the cause. So a step
called through :func:`run_or_reuse` (or :func:`cached`) is run again, its cache refreshed,
whenever a file its result names is gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger


def output_paths(result: Any, keys: Sequence[str] | None = None) -> list[Path]:
    """The files a step's result names.

    Args:
        result: A path string, or a dict of them (other values are not paths).
        keys: Only these keys of a dict result name files (their ``None`` values are
            skipped); without ``keys`` every string value does.
    """
    if keys is not None:
        return [Path(result[k]) for k in keys if result.get(k) is not None]
    values = result.values() if isinstance(result, dict) else [result]
    return [Path(v) for v in values if isinstance(v, str)]


def missing_outputs(result: Any, keys: Sequence[str] | None = None) -> list[Path]:
    """The files named by ``result`` (see :func:`output_paths`) that do not exist."""
    return [path for path in output_paths(result, keys) if not path.exists()]


@dataclass(frozen=True)
class Outcome:
    """A cached step's result, and whether it is a stored result reused as it was."""

    result: Any
    reused: bool


def run_or_reuse(step: Any, cache: dict[str, Any], *args: Any, outputs: Sequence[str] | None = None) -> Outcome:
    """Call the task ``step`` with the options ``cache``; run it again when its result names a file that is gone.

    Args:
        step: A Prefect task.
        cache: Options for ``step.with_options`` (its result storage).
        *args: The task's arguments.
        outputs: The result's keys that name files (see :func:`output_paths`).

    Returns:
        The result, ``reused`` when it is a stored (``Cached``) result whose files are all there.
    """
    state = step.with_options(**cache)(*args, return_state=True)
    result = state.result()
    gone = missing_outputs(result, outputs)
    if gone:
        get_run_logger().info("%s: %d files of the stored result are missing (%s), running it again",
                              step.name, len(gone), gone[0].name)
        return Outcome(step.with_options(**cache, refresh_cache=True)(*args), reused=False)
    return Outcome(result, reused=state.is_completed() and state.name == "Cached")


def cached(step: Any, cache: dict[str, Any], *args: Any) -> Any:
    """:func:`run_or_reuse`'s result, for a step whose result's strings are all file paths."""
    return run_or_reuse(step, cache, *args).result
