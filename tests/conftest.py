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
from typing import Any, Callable

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
# test` (what CI runs) runs them too. Listed here by path or node id, not decorated in each
# module, so the tier reads in one place. Times measured on 2 shared cores (see README).
SLOW_TESTS: dict[str, str] = {
    # Kill, SIGTERM and resume: real runs, real signals.
    "tests/flows/test_prepare_kill.py": "kills a real prepare run and resumes it",
    "tests/flows/test_score.py": "tomoflow score and evaluate through the CLI (each starts Prefect), a killed score run",
    "tests/flows/test_faults_cli.py": "the CLI's fault tests: kills, SIGTERM, resumes, whole runs",
    "tests/flows/test_faults_round2_prepare.py": "prepare through the CLI on faulty data (each run starts Prefect)",
    "tests/flows/test_faults_round2_train.py": "train and evaluate through the CLI, SIGTERM included",
    "tests/flows/test_faults_round3_prepare.py": "prepare through the CLI on a mounted, duplicated or blank collection",
    "tests/flows/test_faults_round3_train.py": "train and evaluate through the CLI: external audits, locks, the report",
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the slow tier: every test whose node id (from the repository root) starts with a key of
    :data:`SLOW_TESTS` (a file, or a test name or its prefix)."""
    for item in items:
        if item.nodeid.startswith(tuple(SLOW_TESTS)):
            item.add_marker(pytest.mark.slow)
