"""The experiments' comparison: planted constant and random models are marked; equal presets merge; weights first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.cli import main
from tasks.pipeline.comparison import comparison_row, floor_rows, write_comparison
from tasks.pipeline.experiments import experiment_overrides, plan_experiments
from tasks.evaluate.metrics import evaluate_predictions
from tasks.core.presets import pipeline_config
from tasks.evaluate.trivial_scores import trivial_baseline
from tests.tasks.evaluate.test_trivial_scores import _collection


def _planted(root: Path, manifest: pd.DataFrame, name: str, probability: np.ndarray) -> dict[str, str]:
    """A fake pipeline run's outputs: predictions, metrics.json (with the trivial block), history."""
    test = manifest[manifest["split"] == "test"].reset_index(drop=True).assign(probability=probability)
    folder = root / name
    folder.mkdir()
    metrics = evaluate_predictions(test, bootstrap=200, null_draws=50)
    metrics["trivial"] = trivial_baseline(test, manifest, root, bootstrap=200)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame({"epoch": [1, 2], "train_loss": [0.7, 0.6]}).to_csv(folder / "history.csv", index=False)
    test.to_parquet(folder / "predictions.parquet")
    return {"metrics": str(folder / "metrics.json"), "history": str(folder / "history.csv"),
            "predictions": str(folder / "predictions.parquet"), "manifest": str(root / "manifest.parquet"),
            "report": str(folder / "report.html")}


def test_constant_and_random_models_are_marked(tmp_path: Path) -> None:
    manifest = _collection(tmp_path, bright=True, n=32)
    manifest.to_parquet(tmp_path / "manifest.parquet")
    n = int((manifest["split"] == "test").sum())
    labels = manifest.loc[manifest["split"] == "test", "label"].to_numpy()
    cfg = pipeline_config(preset="demo", data_root=str(tmp_path), output_root=str(tmp_path))
    rows = [
        comparison_row("m1-baseline", cfg, _planted(tmp_path, manifest, "constant", np.full(n, 0.3))),
        comparison_row("m1-augment", cfg, _planted(tmp_path, manifest, "random", np.random.default_rng(0).random(n))),
        comparison_row(["m1-dense4", "m1-adam"], cfg, _planted(tmp_path, manifest, "good", np.where(labels == 1, 0.9, 0.1))),
    ]
    floors = {"single-slice": floor_rows(cfg, _planted(tmp_path, manifest, "floor", np.full(n, 0.5)))}
    written = write_comparison(rows, floors, tmp_path)
    table = pd.read_csv(written["comparison_csv"]).set_index("preset")
    for column in ("degenerate", "null_roc_auc", "trivial_roc_auc", "beats_null", "beats_trivial"):
        assert column in table.columns
    # Image-level figures lead.
    columns = list(table.columns)
    assert columns.index("slice_roc_auc") < columns.index("patient_roc_auc")
    assert bool(table.loc["m1-baseline", "degenerate"]) is True
    assert not bool(table.loc["m1-baseline", "beats_null"]) and not bool(table.loc["m1-baseline", "beats_trivial"])
    assert bool(table.loc["m1-augment", "degenerate"]) is False
    assert not bool(table.loc["m1-augment", "beats_null"]) and not bool(table.loc["m1-augment", "beats_trivial"])
    # Planted as constant (m1-baseline) and random (m1-augment); a perfect model (m1-dense4 + m1-adam).
    # A perfect model on bright lesions ties the trivial score (AUC 1.0 both): it does not beat it either.
    assert table.loc["m1-dense4 + m1-adam", "slice_roc_auc"] == 1.0 and bool(table.loc["m1-dense4 + m1-adam", "beats_null"])
    assert table.loc["floor-trivial", "slice_roc_auc"] == pytest.approx(1.0)
    assert {"floor-constant", "floor-random", "floor-trivial"} <= set(table.index)

    md = Path(written["comparison_md"]).read_text()
    line = next(x for x in md.splitlines() if x.startswith("| m1-baseline"))
    assert "DEGENERATE" in line and "not above random" in line and "not above trivial" in line
    line = next(x for x in md.splitlines() if x.startswith("| m1-augment"))
    assert "DEGENERATE" not in line and "not above random" in line and "**NO**" in line
    assert "| image ROC AUC |" in md and md.index("image ROC AUC") < md.index("patient ROC AUC")


def test_equal_effective_configs_are_one_run(tmp_path: Path) -> None:
    runs = plan_experiments(["m2-inception", "m2-inception-scratch", "m2-baseline"], data_root=str(tmp_path),
                            output_root=str(tmp_path), weights="none",
                            overrides=experiment_overrides(epochs=2, image_size=64, max_batches=3))
    assert [names for names, _, _ in runs] == [["m2-inception", "m2-inception-scratch"], ["m2-baseline"]]
    cfg = runs[0][1]
    assert cfg.model.weights == "none" and cfg.train.epochs == 2 and cfg.train.max_batches == 3
    # Inception's minimum input is 75 px: the small size is raised for it alone.
    assert cfg.slices.image_size == cfg.train.image_size == 75
    assert runs[1][1].slices.image_size == runs[1][1].train.image_size == 64


def test_missing_weights_stop_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import models.weights.resolve
    from models.weights.resolve import WeightsNotFoundError

    def missing(name, weights):
        if weights in (None, "none"):
            return None
        raise WeightsNotFoundError(f"no {name} ImageNet weights in the cache")

    monkeypatch.setattr(models.weights.resolve, "resolve_weights", missing)
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "out"
    assert main(["experiments", "--data-root", str(data), "--out", str(out), "--preset", "m1-baseline"]) == 2
    err = capsys.readouterr().err
    assert "m1-baseline" in err and "--weights none" in err and "Traceback" not in err
    assert not (out / "prepared").exists()
    assert main(["experiments", "--data-root", str(data), "--out", str(out), "--epochs", "0"]) == 2
    assert "--epochs 0" in capsys.readouterr().err


def test_small_image_size_raises_inception_input_to_its_minimum(tmp_path: Path) -> None:
    """--image-size 64 runs every preset: Inception's network input becomes its 75 px minimum, said in the note."""
    import torch

    from models.nets.classifier import build_model

    groups = plan_experiments(["m2-inception", "m1-baseline"], data_root=str(tmp_path), output_root=str(tmp_path),
                              overrides=experiment_overrides(epochs=2, image_size=64), weights="none")
    by_name = {names[0]: (cfg, note) for names, cfg, note in groups}
    inception, note = by_name["m2-inception"]
    assert inception.train.image_size == 75 and inception.slices.image_size == 75
    assert "75 px" in note and "64 px" in note
    assert by_name["m1-baseline"][0].train.image_size == by_name["m1-baseline"][0].slices.image_size == 64
    model = build_model(model=inception.model.model, weights="none", image_size=inception.train.image_size).train()
    assert model(torch.rand(2, 1, 75, 75)).shape[0] == 2
