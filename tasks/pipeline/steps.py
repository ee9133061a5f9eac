"""Steps of the ``tomoflow-pipeline`` and ``tomoflow-experiments`` flows that are not Prefect tasks.

Plain functions the flows in :mod:`flows.pipeline` call in order: the run's configuration
(defaults < preset < deployment config < run config < paths), the fall-back to training
from scratch, training as a deployment, the run's artifacts; the experiments' comparison table is in :mod:`tasks.pipeline.comparison`. The output layout is in :mod:`tasks.infra.runners`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import ValidationError

from tasks.core.config import PipelineConfig, TrainConfig
from tasks.core.presets import check_preset, explicit_settings, merge_config, pipeline_config
from tasks.infra.environment import (DATA_VAR, OUTPUT_VAR, ServiceConfigError, deployment_defaults, deployment_id,
                           flow_run_url, one_line, outputs_url, resolve_root, validation_message)


def resolve_config(config: PipelineConfig | dict[str, Any] | None, data_root: str | None, output_root: str | None,
             preset: str | None) -> PipelineConfig:
    """The run's configuration, checked before any work; every problem is one line saying what to change.

    Order, later wins: the defaults, the preset, the deployment's stored ``config``, the
    run's ``config`` (merged into the deployment's, not replacing it), then ``data_root`` and
    ``output_root`` (or ``TOMOFLOW_DATA_ROOT`` / ``TOMOFLOW_OUTPUT_ROOT`` of the worker).

    Raises:
        ServiceConfigError: unknown preset, missing or wrong root, invalid setting.
    """
    if preset is not None:
        try:
            check_preset(preset)
        except ValueError as exc:
            raise ServiceConfigError(str(exc)) from None
    try:
        explicit = explicit_settings(config)
    except ValueError as exc:
        raise ServiceConfigError(str(exc)) from None
    stored = deployment_defaults("config") if deployment_id() is not None else None
    if isinstance(stored, dict):
        explicit = merge_config(stored, explicit)
    data = explicit.get("data") if isinstance(explicit.get("data"), dict) else {}
    in_deployment = deployment_id() is not None
    # A scheduled deployment carries no paths: the worker's environment says where the data is.
    data_root = resolve_root(data_root or data.get("data_root"), DATA_VAR, "data_root", "data root",
                             must_exist=True, deployment=in_deployment)
    output_root = resolve_root(output_root or data.get("output_dir"), OUTPUT_VAR, "output_root", "output root",
                               must_exist=False, deployment=in_deployment)
    try:
        return pipeline_config(preset=preset, data_root=data_root, output_root=output_root, base=explicit)
    except ValidationError as exc:
        raise ServiceConfigError(validation_message(exc)) from None


def weights_or_scratch(cfg: PipelineConfig) -> tuple[PipelineConfig, str | None]:
    """Keep the configured weights, or fall back to scratch (with a note) where allowed."""
    if cfg.model.weights != "imagenet" or not cfg.scratch_if_no_weights:
        return cfg, None
    from models.weights import WeightsNotFoundError, resolve_weights

    try:
        resolve_weights(cfg.model.model, cfg.model.weights)
        return cfg, None
    except WeightsNotFoundError as exc:
        from tasks.core.presets import scratch_config

        scratch = scratch_config(cfg)
        rates = f"lr {scratch.train.lr:g}" + (
            f", backbone {scratch.train.lr * scratch.train.backbone_lr_factor:g}"
            if scratch.train.backbone_lr_factor != 1 else "")
        note = (f"ImageNet weights are not in torchvision's cache, so this run trains {scratch.model.model} FROM "
                f"SCRATCH ({scratch.train.optimizer}, {rates}; its figures are not transfer-learning "
                f"figures). {exc}")
        return scratch, note


@task(name="preflight", cache_policy=NO_CACHE, persist_result=False, retries=0)
def preflight(cfg: PipelineConfig, started_by: str) -> None:
    """The pipeline's first step: weights, roots, writable output, the training pool; seconds, before any work.

    Args:
        cfg: The run's resolved configuration.
        started_by: ``deployment`` or ``cli``: which fix the messages name.

    Raises:
        PreflightError: whole sentences naming each problem and the fix for the way the run
            was started (the deployment parameter or the command-line option).
    """
    from tasks.pipeline.preflight import PreflightError, preflight_message, preflight_problems

    if cfg.train_deployment:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            problems = preflight_problems(cfg, started_by, client)
    else:
        problems = preflight_problems(cfg, started_by)
    if problems:
        raise PreflightError(preflight_message(problems))


class ChildRunFailed(RuntimeError):
    """A deployment the pipeline handed work to did not complete; the message carries its reason."""


def _child_reason(state: Any) -> str:
    message = (getattr(state, "message", None) or "").strip()
    # The child's message starts with Prefect's own prefix; the operator wants what follows.
    for prefix in ("Flow run encountered an exception: ",):
        message = message.replace(prefix, "")
    return one_line(message or "no message", limit=400)


def run_training_deployment(name: str, train_cfg: TrainConfig) -> None:
    """Training as deployment ``name`` (the GPU pool); its failure reason and link become this run's."""
    from prefect.deployments import run_deployment

    child = run_deployment(name, parameters={"config": train_cfg.model_dump(mode="json")}, timeout=None,
                           as_subflow=True)
    if child.state is None or not child.state.is_completed():
        state_name = child.state.name if child.state else "unknown"
        raise ChildRunFailed(f"training deployment {name} ended {state_name}: {_child_reason(child.state)} "
                             f"(child run: {flow_run_url(child.id)})")


def publish_pipeline(cfg: PipelineConfig, root: Path, run_dir: Path, outputs: dict[str, Any], note: str | None) -> None:
    """The pipeline run's own artifacts: the evaluation summary with learning curves and report link."""
    from tasks.pipeline.dashboard import learning_curves_png, pipeline_summary_markdown

    curves = learning_curves_png(outputs["history"], run_dir / "learning_curves.png")
    report_url = outputs_url(outputs["report"], root)
    curves_url = outputs_url(curves, root) if curves else None
    metrics = json.loads(Path(outputs["metrics"]).read_text())
    name = flow_run.name or "pipeline"
    create_markdown_artifact(
        pipeline_summary_markdown(metrics, run_name=name, report_url=report_url, report_path=outputs["report"],
                                  curves_url=curves_url, curves_png=curves, note=note),
        key="pipeline-summary", description="Evaluation of this pipeline run: measures, intervals, AUC, curves")
    if curves_url:
        create_image_artifact(curves_url, key="learning-curves", description=f"Learning curves of {name}")
    report = f"[report.html]({report_url})" if report_url else f"`{outputs['report']}`"
    create_markdown_artifact(
        "\n".join([f"# Outputs of {name}", "", f"- run folder: `{run_dir}`", f"- report: {report}",
                   f"- metrics: `{outputs['metrics']}`", f"- manifest: `{outputs['manifest']}`",
                   f"- checkpoint: `{outputs['checkpoint']}`", *([f"\n> {note}"] if note else [])]),
        key="pipeline-outputs", description="Where this pipeline run's outputs are")
