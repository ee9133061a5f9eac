"""Prefect tasks of the ``evaluate-model`` flow: predict-split, compute-metrics, write-report.

Each task is a thin wrapper over plain functions a test can call without Prefect
(:func:`models.predict.predict`, :func:`tasks.metrics.evaluate_predictions`,
:mod:`models.gradcam`, :func:`tasks.html_report.write_report`); this module adds the cache keys,
retries and the run's artifacts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.caching import content_cache_key_fn
from tasks.config import EvaluateConfig
from tasks.retry import retry_policy

_CACHED = {"persist_result": True, **retry_policy(retries=1, delay_seconds=2)}


def run_inputs(cfg: EvaluateConfig) -> tuple[Path, Path, Path, dict[str, Any]]:
    """(checkpoint, manifest, output folder, training config) of the run to evaluate."""
    run = Path(cfg.run_dir)
    config_path = run / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{run}: no config.json: is this a training run folder (tomoflow train --out RUN)?")
    train_conf = json.loads(config_path.read_text())
    checkpoint = run / "best.pt" if (run / "best.pt").is_file() else run / "last.pt"
    if not checkpoint.is_file():
        raise ValueError(f"{run}: neither best.pt nor last.pt exists; train the model first")
    manifest = Path(cfg.manifest or train_conf["manifest"])
    if not manifest.is_file():
        raise ValueError(f"manifest {manifest} does not exist; pass --manifest")
    return checkpoint, manifest, Path(cfg.output_dir or run), train_conf


@task(name="predict-split", cache_key_fn=content_cache_key_fn(files=("checkpoint", "manifest")), **_CACHED)
def predict_split(checkpoint: str, manifest: str, image_size: int, out_dir: str, cfg: EvaluateConfig) -> str:
    """Run the model over the split's images and write predictions.parquet."""
    import pandas as pd

    from models.predict import predict
    from models.train import load_classifier, resolve_device
    from tasks.io import atomic_write_parquet

    device = resolve_device(cfg.device)
    model = load_classifier(checkpoint, device=device)
    pred = predict(model, pd.read_parquet(manifest), root=Path(manifest).parent, split=cfg.split,
                   image_size=image_size, batch_size=cfg.batch_size, device=device)
    return str(atomic_write_parquet(Path(out_dir) / "predictions.parquet", pred))


@task(name="compute-metrics", cache_key_fn=content_cache_key_fn(files=("predictions", "checkpoint", "manifest")),
      **_CACHED)
def compute_metrics(predictions: str, checkpoint: str, manifest: str, image_size: int, out_dir: str,
                    cfg: EvaluateConfig) -> str:
    """Metrics at slice, volume and patient level with intervals and nulls; Grad-CAM box hits; occlusion."""
    import pandas as pd

    from models.controls import localisation_references, occlusion_control
    from models.gradcam import box_hit_fraction, occlusion_check
    from models.train import load_classifier, resolve_device
    from tasks.io import atomic_write_json
    from tasks.metrics import evaluate_predictions
    from tasks.trivial_scores import trivial_baseline

    pred = pd.read_parquet(predictions)
    metrics = evaluate_predictions(pred, how=cfg.aggregate, threshold=cfg.threshold, bootstrap=cfg.bootstrap,
                                   ci=cfg.ci, seed=cfg.seed, calibration_bins=cfg.calibration_bins)
    metrics["trivial"] = trivial_baseline(pred, pd.read_parquet(manifest), Path(manifest).parent, how=cfg.aggregate,
                                          bootstrap=cfg.bootstrap, ci=cfg.ci, seed=cfg.seed)
    model = load_classifier(checkpoint, device=resolve_device(cfg.device))
    positives = pred[pred["label"] == 1]
    metrics["localization"] = box_hit_fraction(model, positives, Path(manifest).parent, image_size,
                                               batch_size=cfg.batch_size)
    metrics["occlusion"] = occlusion_check(model, positives, Path(manifest).parent, image_size,
                                           threshold=cfg.threshold, batch_size=cfg.batch_size)
    # What the two checks would show by chance, by brightness, or by hiding any tissue.
    metrics["localization"]["references"] = localisation_references(positives, Path(manifest).parent, image_size)
    metrics["occlusion"]["control"] = occlusion_control(model, positives, Path(manifest).parent, image_size,
                                                        threshold=cfg.threshold, batch_size=cfg.batch_size,
                                                        seed=cfg.seed)
    return str(atomic_write_json(Path(out_dir) / "metrics.json", metrics))


@task(name="write-report", cache_key_fn=content_cache_key_fn(files=("metrics", "predictions", "checkpoint")),
      **_CACHED)
def write_report(metrics: str, predictions: str, checkpoint: str, manifest: str, image_size: int, out_dir: str,
                 train_conf: dict[str, Any], cfg: EvaluateConfig) -> str:
    """The self-contained report.html: curves, ROC, confusion, intervals, cohort flow, audit, Grad-CAM."""
    import pandas as pd

    from models.gradcam import gradcam_examples
    from models.train import load_classifier, resolve_device
    from tasks.metrics import chance_losses
    from tasks.html_report import write_report as render

    run = Path(cfg.run_dir)
    pred = pd.read_parquet(predictions)
    summary_path = Path(manifest).parent / "cohort_summary.json"
    model = load_classifier(checkpoint, device=resolve_device(cfg.device))
    examples = gradcam_examples(model, pred, root=Path(manifest).parent, image_size=image_size,
                                threshold=cfg.threshold, per_kind=cfg.gradcam_examples, seed=cfg.seed)
    # Chance on the learning curves: the manifest training read (offline-balanced or not) and its class weights.
    trained_on = Path(train_conf.get("manifest") or manifest)
    used = pd.read_parquet(manifest)
    chance = chance_losses(pd.read_parquet(trained_on) if trained_on.is_file() else used,
                           train_conf.get("train", {}).get("class_balance", "weights"),
                           aux_weight=0.4 if getattr(model, "aux_head", None) is not None else 0.0)
    return str(render(
        run, metrics=json.loads(Path(metrics).read_text()), history=pd.read_csv(run / "history.csv"),
        cohort_summary=json.loads(summary_path.read_text()) if summary_path.is_file() else None,
        config={"train": train_conf, "evaluate": cfg.model_dump(mode="json")}, predictions=pred,
        examples=examples, out_path=Path(out_dir) / "report.html", chance=chance, manifest=used,
    ))


def publish_evaluation(config: EvaluateConfig, metrics: str, report: str) -> None:
    """The run's metrics table and summary artifacts, and warnings for a degenerate model or a weak null."""
    from tasks.html_report import metrics_table, summary_markdown

    logger = get_run_logger()
    values = json.loads(Path(metrics).read_text())
    create_table_artifact(metrics_table(values), key="evaluation-metrics",
                          description=f"Metrics of {config.run_dir} on the {config.split} split")
    create_markdown_artifact(summary_markdown(values), key="evaluation-summary",
                             description=f"Summary of {config.run_dir}")
    if values.get("degenerate"):
        logger.warning("degenerate model: %s", values.get("degenerate_reason"))
    if (values.get("trivial") or {}).get("note"):
        logger.warning("%s", values["trivial"]["note"])
    for level, entry in (values.get("levels") or {}).items():
        if entry.get("null_warning"):
            logger.warning("%s level: %s", level, entry["null_warning"])
    logger.info("report: %s", report)
