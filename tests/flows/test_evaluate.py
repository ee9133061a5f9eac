"""The evaluate-model flow on a tiny trained run, under the Prefect test harness."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tasks.core.config import EvaluateConfig
from tests.flows.artifacts import artifacts_with_keys


@pytest.fixture(scope="module")
def trained_run(prefect_harness, small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flows.prepare import prepare_data
    from flows.train import train_classifier
    from tasks.core.config import DataConfig, ModelConfig, PrepareConfig, SlicesConfig, TrainConfig, TrainParams

    root = tmp_path_factory.mktemp("eval-run")
    manifest = prepare_data(config=PrepareConfig(
        data=DataConfig(data_root=str(small_dataset), output_dir=str(root / "prepared")),
        slices=SlicesConfig(strategy="all-slices", image_size=48, executor="serial")))["manifest"]
    run = root / "run"
    train_classifier(config=TrainConfig(
        manifest=manifest, run_dir=str(run), model=ModelConfig(model="vgg16", weights="none"),
        train=TrainParams(epochs=2, batch_size=8, image_size=32, max_batches=2, num_workers=0, device="cpu")))
    return run


def test_evaluate_flow_writes_predictions_metrics_report_and_artifacts(prefect_harness, trained_run: Path) -> None:
    from flows.evaluate import evaluate_model

    result = evaluate_model(config=EvaluateConfig(run_dir=str(trained_run), bootstrap=50, gradcam_examples=1,
                                                  device="cpu"))
    pred = pd.read_parquet(result["predictions"])
    assert list(pred.columns[:7]) == ["patient_id", "study_uid", "view", "slice_index", "label", "probability", "split"]
    assert set(pred["split"]) == {"test"} and pred["probability"].between(0, 1).all()
    metrics = json.loads(Path(result["metrics"]).read_text())
    for level in ("slice", "volume", "patient"):
        assert {"accuracy", "sensitivity", "specificity"} <= set(metrics["levels"][level]["metrics"])
    assert "localization" in metrics
    # The null beside every level, the degenerate flag, localisation resolution and occlusion.
    for level in ("slice", "volume", "patient"):
        entry = metrics["levels"][level]
        assert "null_roc_auc" in entry and "better_than_null" in entry
    assert isinstance(metrics["degenerate"], bool)
    assert min(metrics["localization"]["map_resolution"]) >= 8 or metrics["localization"]["fraction"] is None
    assert {"flip_fraction", "mean_drop", "n"} <= set(metrics["occlusion"])
    html = Path(result["report"]).read_text()
    assert "<img" in html and 'src="http' not in html
    assert "Occlusion check" in html and "Used in this run" in html and "chance" in html

    keys = {a.key for a in artifacts_with_keys("evaluation-metrics", "evaluation-summary")}
    assert {"evaluation-metrics", "evaluation-summary"} <= keys

    # Nothing changed: the cached steps are reused and the outputs stay byte-identical.
    before = Path(result["metrics"]).read_bytes()
    again = evaluate_model(config=EvaluateConfig(run_dir=str(trained_run), bootstrap=50, gradcam_examples=1,
                                                 device="cpu"))
    assert Path(again["metrics"]).read_bytes() == before
