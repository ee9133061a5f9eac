"""Prefect tasks of the ``evaluate-model`` flow: predict-split, compute-metrics, write-report.

Each task is a thin wrapper over plain functions a test can call without Prefect
(:func:`tasks.evaluate.generalization.predict_rows`, :func:`tasks.evaluate.measures.metrics_json`,
:func:`tasks.evaluate.measures.report_page`, ...); this module adds the cache keys, retries and
the run's artifacts. What the flow reads before its tasks is :mod:`tasks.evaluate.inputs`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.evaluate.inputs import evaluated_split
from tasks.infra.caching import content_cache_key_fn
from tasks.core.config import EvaluateConfig
from tasks.infra.retry import retry_policy

_CACHED = {"persist_result": True, **retry_policy(retries=1, delay_seconds=2)}


@task(name="score-whole-volumes", cache_key_fn=content_cache_key_fn(files=("checkpoint", "manifest")), **_CACHED)
def score_whole_volumes(checkpoint: str, manifest: str, run_dir: str, png_size: int, image_size: int, out_dir: str,
                        cfg: EvaluateConfig) -> str:
    """Every validation and test volume scored over all its frames (``tomoflow score``'s cache): volume_frames.parquet."""
    from tasks.evaluate.whole_volume import score_evaluated_volumes

    return str(score_evaluated_volumes(checkpoint, manifest, run_dir=run_dir, png_size=png_size, image_size=image_size,
                                       out_dir=out_dir, cfg=cfg))


@task(name="audit-training-overlap", cache_key_fn=content_cache_key_fn(files=("checkpoint", "manifest")), **_CACHED)
def audit_training_overlap(checkpoint: str, manifest: str, split: str, out_dir: str, allow_overlap: bool) -> str:
    """Stop (or, when allowed, record) an evaluation on patients the model trained or was validated on."""
    from tasks.evaluate.generalization import training_audit

    return str(training_audit(checkpoint, manifest, split, allow_overlap=allow_overlap, out_dir=out_dir))


@task(name="compare-external", cache_key_fn=content_cache_key_fn(files=("checkpoint", "manifest", "predictions",
                                                                         "external_manifest")),
      **_CACHED)
def compare_external(checkpoint: str, manifest: str, predictions: str, image_size: int, out_dir: str,
                     cfg: EvaluateConfig, external_manifest: str | None = None) -> str:
    """Score the model's own test split again, and write the external figures beside them with the gap and,
    with ``external_manifest``, the trivial brightness score on the external images."""
    import pandas as pd

    from models.training.checkpoint import load_classifier
    from models.training.engine import resolve_device
    from tasks.evaluate.generalization import EXTERNAL_NAME, external_comparison, external_trivial, predict_rows
    from tasks.core.files import atomic_write_json

    device = resolve_device(cfg.device)
    model = load_classifier(checkpoint, device=device)
    own = predict_rows(model, pd.read_parquet(manifest), root=Path(manifest).parent, split="test",
                       image_size=image_size, batch_size=cfg.batch_size, device=device)
    external = pd.read_parquet(predictions)
    trivial = None if external_manifest is None else external_trivial(
        external, own_manifest=manifest, external_manifest=external_manifest, how=cfg.aggregate, n=cfg.bootstrap,
        ci=cfg.ci, seed=cfg.seed)
    comparison = external_comparison(own, external, source=str(cfg.external), threshold=cfg.threshold,
                                     n=cfg.bootstrap, ci=cfg.ci, seed=cfg.seed, trivial=trivial)
    return str(atomic_write_json(Path(out_dir) / EXTERNAL_NAME, comparison))


@task(name="predict-split", cache_key_fn=content_cache_key_fn(files=("checkpoint", "manifest")), **_CACHED)
def predict_split(checkpoint: str, manifest: str, image_size: int, out_dir: str, cfg: EvaluateConfig) -> str:
    """Run the model over the split's images and write predictions.parquet."""
    import pandas as pd

    from models.training.checkpoint import load_classifier
    from models.training.engine import resolve_device
    from tasks.evaluate.generalization import predict_rows
    from tasks.core.files import atomic_write_parquet

    device = resolve_device(cfg.device)
    model = load_classifier(checkpoint, device=device)
    pred = predict_rows(model, pd.read_parquet(manifest), root=Path(manifest).parent, split=evaluated_split(cfg),
                        image_size=image_size, batch_size=cfg.batch_size, device=device)
    return str(atomic_write_parquet(Path(out_dir) / "predictions.parquet", pred))


@task(name="compute-metrics", cache_key_fn=content_cache_key_fn(files=("predictions", "checkpoint", "manifest",
                                                                       "volume_frames")),
      **_CACHED)
def compute_metrics(predictions: str, checkpoint: str, manifest: str, image_size: int, out_dir: str,
                    cfg: EvaluateConfig, volume_frames: str | None = None, threshold_source: str = "",
                    threshold_choice: dict[str, Any] | None = None) -> str:
    """Metrics at slice, volume, patient and whole-volume level with intervals and nulls; Grad-CAM box hits; occlusion."""
    import pandas as pd

    from tasks.core.files import atomic_write_json
    from tasks.evaluate.measures import metrics_json

    metrics = metrics_json(pd.read_parquet(predictions), checkpoint, manifest, image_size, cfg,
                           volume_frames=volume_frames, threshold_source=threshold_source,
                           threshold_choice=threshold_choice)
    return str(atomic_write_json(Path(out_dir) / "metrics.json", metrics))


@task(name="write-report", cache_key_fn=content_cache_key_fn(
    files=("metrics", "predictions", "checkpoint", "audit", "external")), **_CACHED)
def write_report(metrics: str, predictions: str, checkpoint: str, manifest: str, image_size: int, out_dir: str,
                 train_conf: dict[str, Any], cfg: EvaluateConfig, audit: str | None = None,
                 external: str | None = None) -> str:
    """The self-contained report.html: curves, ROC, confusion, intervals, cohort flow, audit, Grad-CAM."""
    from tasks.evaluate.measures import generalization_sections, report_page

    return str(report_page(metrics, predictions, checkpoint, manifest, image_size, Path(out_dir) / "report.html",
                           train_conf, cfg, generalization_sections(checkpoint, audit, external)))


def publish_evaluation(config: EvaluateConfig, metrics: str, report: str, audit: str | None = None,
                       external: str | None = None) -> None:
    """The run's metrics table and summary artifacts (and the training-data audit and external comparison),
    and warnings for a degenerate model, a weak null or an allowed overlap with the training data."""
    from tasks.evaluate.report import metrics_table, summary_markdown
    from tasks.evaluate.report_generalization import external_markdown, training_audit_markdown

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
    if audit:
        audit_values = json.loads(Path(audit).read_text())
        create_markdown_artifact(training_audit_markdown(audit_values), key="training-audit",
                                 description=f"Evaluated data of {config.run_dir} against its training data")
        if audit_values.get("message"):
            logger.warning("%s", audit_values["message"])
    if external:
        create_markdown_artifact(external_markdown(json.loads(Path(external).read_text())), key="external-evaluation",
                                 description=f"{config.run_dir} on {config.external} beside its own test figures")
    logger.info("report: %s", report)
