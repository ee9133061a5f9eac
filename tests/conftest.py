"""Shared fixtures: tiny synthetic DICOMs shaped like BCS-DBT volumes."""

from __future__ import annotations

import os
import tempfile

# Tests never touch the user's ~/.prefect: a throw-away Prefect home unless CI set one.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="tomoflow-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# Prefect's console log handler binds to the sys.stderr of the moment logging is first
# configured. Configure it now, at collection, so it binds to pytest's session-long
# capture rather than to a per-test capsys stream that is closed after that test.
from prefect.logging.configuration import ensure_logging_setup  # noqa: E402

ensure_logging_setup()

from pathlib import Path
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pytest

from synth.dicom_writer import write_dbt_dicom


def breast_phantom(
    n_frames: int = 5, rows: int = 64, columns: int = 48, *, side: str = "R", seed: int = 0
) -> np.ndarray:
    """Stored 10-bit frames with a half-ellipse "breast" touching the ``side`` edge.

    Each frame has its own texture, so frames can be told apart; the background is dark,
    so Duke's edge-sum rule finds the breast on ``side``.
    """
    rng = np.random.default_rng(seed)
    r = np.arange(rows, dtype=np.float64)[:, None]
    c = np.arange(columns, dtype=np.float64)[None, :]
    from_edge = (columns - 1 - c) if side == "R" else c
    inside = ((r - rows / 2) / (0.45 * rows)) ** 2 + (from_edge / (0.8 * columns)) ** 2 < 1
    frames = np.empty((n_frames, rows, columns), dtype=np.uint16)
    for k in range(n_frames):
        noise = rng.integers(-60, 60, (rows, columns))
        tissue = 520 + 330 * np.sin(r / 5 + k) * np.cos(c / 7 - k) + noise
        frames[k] = np.clip(np.where(inside, tissue, 12 + 3 * k), 0, 1023)
    return frames


@pytest.fixture
def make_dbt(tmp_path: Path) -> Callable[..., tuple[Path, np.ndarray]]:
    """Factory: ``make_dbt(name, frames=None, *, view="rcc", **write_dbt_dicom_kwargs)``.

    Writes a multi-frame JPEG 2000 DBT file (window 512/600 in the shared functional groups
    unless overridden) and returns ``(path, stored_frames)``.
    """

    def make(name: str = "volume.dcm", frames: np.ndarray | None = None, **kwargs: Any):
        view = kwargs.pop("view", "rcc")
        if frames is None:
            frames = breast_phantom(side=view[0].upper())
        options = {"patient_id": "DBT-P00001", "study_uid": "DBT-S00001", "window_center": 512.0,
                   "window_width": 600.0, **kwargs}
        path = write_dbt_dicom(tmp_path / name, frames, view=view, **options)
        return path, frames

    return make


@pytest.fixture
def dbt_volume(make_dbt: Callable[..., tuple[Path, np.ndarray]]) -> tuple[Path, np.ndarray]:
    """A 5-frame 64 x 48 rcc volume stored the right way round: ``(path, stored_frames)``."""
    return make_dbt()


@pytest.fixture
def phantom() -> Callable[..., np.ndarray]:
    """The :func:`breast_phantom` generator, for tests that build their own volumes."""
    return breast_phantom


# The slow tier: `make test-fast` (pytest -m "not slow and not e2e") leaves these out; `make
# test` (what CI runs) runs them too. Listed here, and only here, by path or node id (a
# `@pytest.mark.slow` in a module is refused at collection), so the tier reads in one place with
# its reasons; a key that matches no collected test stops the run (see `stale_slow_keys`), so a
# renamed test cannot fall silently into the fast tier. Times measured on 2 shared cores (see docs/testing.md).
SLOW_TESTS: dict[str, str] = {
    # Kill, SIGTERM and resume: real runs, real signals.
    "tests/flows/test_prepare_kill.py": "kills a real prepare run and resumes it",
    "tests/flows/test_score.py": "tomoflow score and evaluate through the CLI (each starts Prefect), a killed score run",
    "tests/flows/test_cli_lifecycle.py": "the command as a process: kills, SIGTERM, resumes, whole runs",
    "tests/flows/test_prepare_cli.py": "prepare through the CLI on faulty data (each run starts Prefect)",
    "tests/flows/test_train_cli.py": "train and evaluate through the CLI, SIGTERM included",
    "tests/flows/test_prepare_cli_collections.py": "prepare through the CLI on a mounted, duplicated or blank collection",
    "tests/flows/test_train_cli_inputs.py": "train and evaluate through the CLI: external audits, locks, the report",
    "tests/models/training/test_fit.py::test_killed_run_resumes": "kills training and resumes it",
    # End to end: whole flows, the service, every command.
    "tests/e2e/test_service.py": "PostgreSQL, a Prefect server, workers and deployments",
    "tests/test_golden.py": "every command end to end against recorded outputs",
    "tests/flows/test_pipeline.py": "the whole pipeline and the experiments, twice",
    "tests/flows/test_transfer_cli.py": "trains a model, fine-tunes it, evaluates on external data",
    "tests/flows/test_sweep.py": "a 2 x 2 training-size sweep through the CLI",
    "tests/flows/test_evaluate.py": "the evaluate flow with Grad-CAM and the report",
    "tests/flows/test_train.py::test_train_flow_two_epochs": "the train flow, killed and resumed",
    "tests/flows/test_small_data.py::test_prepare_completes_on_a_fresh_prefect_home": "a fresh PREFECT_HOME's database",
    "tests/models/training/test_engine.py::test_demo_scratch_recipe_learns": "trains the demo's recipe until it learns",
    "tests/synth/test_difficulty.py::test_moderate_brightness_floor_stays_low_over_seeds_fractions_and_sizes":
        "renders ten 160-patient moderate collections' single-slice images at three sizes (15 s of CPU, more loaded)",
    # Other processes: Dask clusters, torchrun.
    "tests/flows/test_dask.py": "starts a Dask cluster and a temporary Prefect server",
    "tests/models/training/test_distributed.py": "torchrun with two ranks",
    "tests/models/test_imports.py::test_each_module_imports_alone_in_a_fresh_interpreter":
        "one fresh interpreter per models module, each importing torch",
}


def stale_slow_keys(keys: Iterable[str], nodeids: Iterable[str], collected_whole: Callable[[str], bool]) -> list[str]:
    """The keys of the slow list that match no collected test although this run collected their file whole.

    ``collected_whole(path)`` says whether the run collected the file ``path`` (relative to the
    repository root) entirely; a key whose file it did not (the run named other files, or single
    tests) cannot be judged and is not reported.
    """
    nodeids = tuple(nodeids)
    return [key for key in keys
            if collected_whole(key.split("::")[0]) and not any(n.startswith(key) for n in nodeids)]


# Test files whose collection failed or was skipped: their keys are not judged (the failure is reported).
_UNCOLLECTED: set[str] = set()


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if not report.passed:
        _UNCOLLECTED.add(report.nodeid.split("::")[0])


def _collected_whole(config: pytest.Config) -> Callable[[str], bool]:
    """Whether this run collects a file (relative to the repository root) whole: an argument without
    ``::`` names it or a folder above it, its collection did not fail, and no --ignore, --ignore-glob
    or --last-failed leaves files out."""
    if config.getoption("lf", False) or config.getoption("ignore", None) or config.getoption("ignore_glob", None):
        return lambda path: False
    base, root = config.invocation_params.dir, config.rootpath
    whole = [(base / arg).resolve() for arg in config.args if "::" not in arg]

    def covers(path: str) -> bool:
        target = (root / path).resolve()
        return path not in _UNCOLLECTED and any(target == w or w in target.parents for w in whole)

    return covers


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the slow tier: every test whose node id (from the repository root) starts with a key of
    :data:`SLOW_TESTS` (a file, or a test name or its prefix). Stop with a usage error when a test
    marks itself slow (the list is the one place) or when a key matches no collected test."""
    decorated = [item.nodeid for item in items if item.get_closest_marker("slow") is not None]
    if decorated:
        raise pytest.UsageError(f"{decorated[0]} is marked slow in its module: list it in SLOW_TESTS in "
                                f"tests/conftest.py instead ({len(decorated)} test(s) marked so)")
    stale = stale_slow_keys(SLOW_TESTS, (item.nodeid for item in items), _collected_whole(config))
    if stale:
        raise pytest.UsageError(f"SLOW_TESTS key {stale[0]!r} in tests/conftest.py matches no collected test "
                                f"(renamed or removed?): update the key ({len(stale)} stale key(s): {stale})")
    for item in items:
        if item.nodeid.startswith(tuple(SLOW_TESTS)):
            item.add_marker(pytest.mark.slow)
