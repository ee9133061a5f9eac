"""Tests for tasks.score.paths: score-studies' paths from the worker's environment, and the output root its runs queue on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.core.score_config import ScoreConfig
from tasks.infra.environment import ServiceConfigError
from tasks.score.paths import RUN_VAR, SCORE_DATA_VAR, settled_score_config


def test_paths_come_from_the_environment_when_the_run_has_none(tmp_path: Path, monkeypatch) -> None:
    run, data, root = tmp_path / "run", tmp_path / "incoming", tmp_path / "out"
    run.mkdir(), data.mkdir()
    monkeypatch.setenv(RUN_VAR, str(run))
    monkeypatch.setenv(SCORE_DATA_VAR, str(data))
    monkeypatch.setenv("TOMOFLOW_OUTPUT_ROOT", str(root))
    cfg, slot_root, deployed = settled_score_config(ScoreConfig())
    assert (cfg.run_dir, cfg.data_root, cfg.output_dir) == (str(run), str(data), str(root / "scores"))
    assert slot_root == root and deployed is False  # the queue is the output root's, as the pipeline's
    monkeypatch.delenv(SCORE_DATA_VAR)
    monkeypatch.setenv("TOMOFLOW_DATA_ROOT", str(data))
    assert settled_score_config(ScoreConfig())[0].data_root == str(data)
    explicit = settled_score_config(ScoreConfig(output_dir=str(tmp_path / "mine")))
    assert explicit[0].output_dir == str(tmp_path / "mine") and explicit[1] == tmp_path / "mine"


def test_a_missing_run_folder_names_the_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(RUN_VAR, raising=False)
    with pytest.raises(ServiceConfigError, match=RUN_VAR):
        settled_score_config(ScoreConfig(data_root=str(tmp_path), output_dir=str(tmp_path / "o")))
