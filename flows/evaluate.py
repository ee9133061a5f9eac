"""The ``evaluate-model`` flow: predictions, metrics with intervals, Grad-CAM and the report.

The tasks live in :mod:`tasks.evaluate.steps`, what the evaluation reads in :mod:`tasks.evaluate.inputs`
and the operating threshold in :mod:`tasks.evaluate.threshold`; this module only calls them in order.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from flows.prepare import prepare_data
from tasks.core.config import EvaluateConfig
from tasks.evaluate.inputs import evaluated_split, external_data, png_size_of, run_inputs
from tasks.evaluate.locks import evaluation_locks
from tasks.evaluate.steps import (
    audit_training_overlap,
    compare_external,
    compute_metrics,
    predict_split,
    publish_evaluation,
    score_whole_volumes,
    write_report,
)
from tasks.evaluate.threshold import choose_operating_threshold
from tasks.infra.lifecycle import cancellable
from tasks.infra.process_defaults import apply_process_defaults
from tasks.infra.run_names import config_run_name


def _describe(cfg: EvaluateConfig) -> str:
    """``<run folder> test`` of ``evaluate <run folder> test``."""
    return f"{Path(cfg.run_dir).name} {cfg.split}"


_run_name = config_run_name("evaluate", EvaluateConfig, _describe)


@flow(name="evaluate-model", flow_run_name=_run_name, log_prints=True)
def evaluate_model(config: EvaluateConfig = EvaluateConfig()) -> dict[str, str]:
    """Evaluate a trained run on a split and write predictions, metrics and a report.

    Args:
        config: The run folder, split, aggregation, threshold and bootstrap settings.

    Returns:
        Paths of ``predictions`` (predictions.parquet), ``metrics`` (metrics.json) and
        ``report`` (report.html).
    """
    apply_process_defaults()  # log redaction and the environment defaults, in a deployment's run too
    # The CLI holds these already (same process: re-entered); a deployment takes them here.
    with evaluation_locks(config.run_dir, config.output_dir, what=f"flow run {flow_run.name or ''}"):
        return cancellable(_evaluate, config, out=Path(config.output_dir or config.run_dir), flow="evaluate-model")


def _evaluate(config: EvaluateConfig) -> dict[str, str]:
    checkpoint, manifest, out, train_conf = run_inputs(config)
    own_manifest = manifest
    if config.external:
        manifest, prepare = external_data(config, own_manifest, out)
        if prepare is not None:  # a data root: prepared like the training data first (a subflow)
            manifest = Path(prepare_data(config=prepare)["manifest"])
    image_size = int(train_conf["train"]["image_size"])
    cache = {"result_storage": (out / ".cache").resolve()}
    frames = None
    if not config.external:  # every validation and test volume over all its frames: the deployment's figure
        frames = score_whole_volumes.with_options(**cache)(str(checkpoint), str(manifest), config.run_dir,
                                                            png_size_of(manifest, image_size), image_size, str(out),
                                                            config)
    threshold, source, choice = choose_operating_threshold(config, frames, Path(config.run_dir), out,
                                                           own_manifest=not config.external)
    config = config.model_copy(update={"threshold": threshold})
    audit = audit_training_overlap.with_options(**cache)(str(checkpoint), str(manifest), evaluated_split(config),
                                                         str(out), config.allow_overlap)
    predictions = predict_split.with_options(**cache)(str(checkpoint), str(manifest), image_size, str(out), config)
    external = None
    if config.external:
        external = compare_external.with_options(**cache)(str(checkpoint), str(own_manifest), predictions,
                                                          image_size, str(out), config, str(manifest))
    metrics = compute_metrics.with_options(**cache)(predictions, str(checkpoint), str(manifest), image_size,
                                                    str(out), config, frames, source, choice)
    report = write_report.with_options(**cache)(metrics, predictions, str(checkpoint), str(manifest), image_size,
                                                str(out), train_conf, config, audit, external)
    publish_evaluation(config, metrics, report, audit, external)
    return {"predictions": predictions, "metrics": metrics, "report": report, "training_audit": audit,
            **({"external": external} if config.external else {})}
