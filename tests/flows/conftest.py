"""Fixtures for flow tests: one Prefect test harness per session, one synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory):
    """A temporary Prefect API for the whole session (it takes ~7 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic BCS-DBT dataset (20 patients, 64 x 48 frames), made once."""
    from synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("bcs-dbt")
    generate_dataset(root, patients=20, seed=3, rows=64, columns=48, frames=(6, 10), positive_fraction=0.3)
    return root
