"""Tests for tasks.infra.rerun: a cached step runs again when a file its result names is gone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tasks.infra.rerun as rerun
from tasks.infra.rerun import cached, missing_outputs, output_paths, run_or_reuse


class _State:
    """What a Prefect task call with ``return_state=True`` returns, reduced to what run_or_reuse reads."""

    def __init__(self, result: Any, name: str) -> None:
        self._result, self.name = result, name

    def result(self) -> Any:
        return self._result

    def is_completed(self) -> bool:
        return self.name in ("Completed", "Cached")


class _Step:
    """A task stand-in: returns ``stored`` as a Cached state, or calls ``make`` when the cache is refreshed."""

    name = "make-files"

    def __init__(self, stored: Any, make: Any) -> None:
        self.stored, self.make, self.calls = stored, make, []

    def with_options(self, **options: Any) -> Any:
        def call(*args: Any, return_state: bool = False) -> Any:
            self.calls.append(options)
            if options.get("refresh_cache"):
                return self.make(*args)
            return _State(self.stored, "Cached") if return_state else self.stored
        return call


@pytest.fixture(autouse=True)
def _no_run_logger(monkeypatch) -> None:
    import logging

    monkeypatch.setattr(rerun, "get_run_logger", lambda: logging.getLogger("test_rerun"))


def test_output_paths_reads_every_string_or_only_the_named_keys(tmp_path: Path) -> None:
    result = {"manifest": str(tmp_path / "m.parquet"), "device": "cpu", "epochs": 3, "best": None}
    assert output_paths(result) == [tmp_path / "m.parquet", Path("cpu")]
    assert output_paths(result, ("manifest", "best")) == [tmp_path / "m.parquet"]
    assert output_paths(str(tmp_path / "plan.parquet")) == [tmp_path / "plan.parquet"]


def test_missing_outputs_names_only_the_files_that_are_gone(tmp_path: Path) -> None:
    (tmp_path / "here.csv").write_text("x")
    result = {"here": str(tmp_path / "here.csv"), "gone": str(tmp_path / "gone.csv")}
    assert missing_outputs(result) == [tmp_path / "gone.csv"]


def test_a_stored_result_with_its_files_is_reused_without_running(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x")
    step = _Step({"a": str(tmp_path / "a.csv"), "device": "cpu"}, make=lambda *a: pytest.fail("must not run"))
    outcome = run_or_reuse(step, {"result_storage": tmp_path}, 1, outputs=("a",))
    assert outcome.reused and outcome.result["a"] == str(tmp_path / "a.csv")
    assert step.calls == [{"result_storage": tmp_path}]


def test_a_stored_result_whose_file_is_gone_runs_again_with_a_fresh_cache(tmp_path: Path) -> None:
    def make(n: int) -> dict[str, str]:
        (tmp_path / "a.csv").write_text(str(n))
        return {"a": str(tmp_path / "a.csv")}

    step = _Step({"a": str(tmp_path / "a.csv")}, make=make)
    outcome = run_or_reuse(step, {"result_storage": tmp_path}, 7)
    assert not outcome.reused and (tmp_path / "a.csv").read_text() == "7"
    assert step.calls[-1] == {"result_storage": tmp_path, "refresh_cache": True}
    # cached() is the same rule, returning the result alone.
    (tmp_path / "a.csv").unlink()
    assert cached(step, {"result_storage": tmp_path}, 8) == {"a": str(tmp_path / "a.csv")}
    assert (tmp_path / "a.csv").read_text() == "8"
