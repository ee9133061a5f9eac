"""The tomoflow-pipeline flow: whole run, cached rerun, retry after a training failure, experiments."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

TINY = {
    "slices": {"image_size": 48, "executor": "serial"},
    "model": {"weights": "none"},
    "train": {"epochs": 1, "batch_size": 8, "image_size": 32, "max_batches": 1, "num_workers": 0, "device": "cpu"},
    "augment": {"offline_balance": False},
    "evaluate": {"bootstrap": 20, "gradcam_examples": 1, "device": "cpu"},
}


def _tiny(data: Path, out: Path, strategy: str = "single-slice"):
    from tasks.core.presets import pipeline_config

    base = {**TINY, "slices": {**TINY["slices"], "strategy": strategy}}
    return pipeline_config(data_root=str(data), output_root=str(out), base=base)


def _mtimes(folder: Path, pattern: str) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob(pattern))}


def test_pipeline_runs_then_reuses_every_step(prefect_harness, small_dataset: Path, tmp_path: Path) -> None:
    from flows.pipeline import tomoflow_pipeline

    out = tmp_path / "out"
    first = tomoflow_pipeline(config=_tiny(small_dataset, out))
    for key in ("manifest", "checkpoint", "metrics", "report", "predictions"):
        assert Path(first[key]).is_file(), key
    run_dir = Path(first["run_dir"])
    assert run_dir.parent == out.resolve() / "runs"
    assert (run_dir / "evaluation" / "report.html").is_file()
    assert json.loads((run_dir / "run.json").read_text())["report"] == first["report"]
    # The merged configuration is stored with the run; the learning curves are there for the dashboard.
    assert json.loads((run_dir / "config.json").read_text())["config"]["train"]["epochs"] == 1
    assert (run_dir / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"

    pngs = _mtimes(out / "prepared", "*.png")
    checkpoint = Path(first["checkpoint"]).stat().st_mtime_ns
    metrics = Path(first["metrics"]).read_bytes()
    second = tomoflow_pipeline(config=_tiny(small_dataset, out))
    assert second["run_dir"] != first["run_dir"]
    assert _mtimes(out / "prepared", "*.png") == pngs
    assert Path(second["checkpoint"]).stat().st_mtime_ns == checkpoint
    assert Path(second["metrics"]).read_bytes() == metrics


def test_training_failure_keeps_preparation_and_retry_starts_at_training(
        prefect_harness, small_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    import tasks.train.steps
    import models.training.fit
    from flows.pipeline import tomoflow_pipeline

    out = tmp_path / "out"
    monkeypatch.setattr(tasks.train.steps.fit_model, "retries", 0)

    def broken_fit(*args, **kwargs):
        raise RuntimeError("simulated GPU failure")

    monkeypatch.setattr(models.training.fit, "fit", broken_fit)
    with pytest.raises(RuntimeError, match="simulated GPU failure"):
        tomoflow_pipeline(config=_tiny(small_dataset, out, strategy="all-slices"))
    manifest = next((out / "prepared").rglob("manifest.parquet"))
    prepared = _mtimes(out / "prepared", "*.png") | {manifest: manifest.stat().st_mtime_ns}

    monkeypatch.undo()
    result = tomoflow_pipeline(config=_tiny(small_dataset, out, strategy="all-slices"))
    assert Path(result["checkpoint"]).is_file()
    assert (_mtimes(out / "prepared", "*.png") | {manifest: manifest.stat().st_mtime_ns}) == prepared


def test_experiments_write_comparison(prefect_harness, small_dataset: Path, tmp_path: Path) -> None:
    from flows.pipeline import run_experiments

    out = tmp_path / "exp"
    result = run_experiments(data_root=str(small_dataset), output_root=str(out),
                             presets=["m1-baseline", "m2-baseline"], overrides=TINY)
    table = pd.read_csv(result["comparison_csv"])
    # The study's rows, then the floor: a constant and a random scorer on each strategy's test images.
    assert list(table["preset"]) == ["m1-baseline", "m2-baseline", "floor-constant", "floor-random",
                                     "floor-trivial", "floor-constant", "floor-random", "floor-trivial"]
    assert list(table["strategy"]) == ["all-slices", "single-slice", "all-slices", "all-slices", "all-slices",
                                       "single-slice", "single-slice", "single-slice"]
    for column in ("degenerate", "null_roc_auc", "trivial_roc_auc", "beats_null", "beats_trivial"):
        assert column in table.columns
    constant = table[table["preset"] == "floor-constant"]
    assert (constant["patient_roc_auc"] == 0.5).all() and (constant["patient_sensitivity"] == 1.0).all()
    assert table["patient_null_roc_auc"].notna().all()
    for column in ("patient_accuracy", "patient_sensitivity", "patient_specificity", "patient_accuracy_low"):
        assert column in table.columns
    md = Path(result["comparison_md"]).read_text()
    assert "| m1-baseline | all-slices | vgg16 |" in md and "| m2-baseline | single-slice |" in md
    assert "| floor-random | single-slice | random scorer |" in md and "random AUC" in md and "trivial AUC" in md
    # One prepared manifest per strategy (and image size), shared by the presets that use it.
    assert len(list((out / "prepared").iterdir())) == 2
