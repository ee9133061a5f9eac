"""Steps of the ``tomoflow-pipeline`` and ``tomoflow-experiments`` flows: the preflight task and the wiring.

What the flows in :mod:`flows.pipeline` call in order, where Prefect is involved: the settled
configuration (logged), the flow run's name, one run per output root for deployments, the run
folder and its records, training as a deployment, the run's artifacts. The experiments'
comparison table is in :mod:`tasks.pipeline.comparison`; the configuration's merge and the
fall-back to scratch in :mod:`tasks.pipeline.run_config`; the output layout and the subflows'
configurations in :mod:`tasks.pipeline.layout`.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from tasks.core.config import EvaluateConfig, PipelineConfig, TrainConfig
from tasks.core.files import atomic_write_json
from tasks.core.presets import explicit_settings, list_presets, merge_config, pipeline_config
from tasks.infra.environment import deployment_defaults, deployment_id, flow_run_url, one_line, outputs_url
from tasks.pipeline.layout import link_outputs, run_folder
from tasks.pipeline.run_config import resolve_config, weights_or_scratch


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


def settled_config(config: PipelineConfig | dict[str, Any] | None, data_root: str | None, output_root: str | None,
                   preset: str | None) -> tuple[PipelineConfig, str | None]:
    """:func:`resolve_config`, then :func:`weights_or_scratch`; the fall-back's note is logged as a warning."""
    cfg, note = weights_or_scratch(resolve_config(config, data_root, output_root, preset))
    if note:
        get_run_logger().warning(note)
    return cfg, note


def started_by() -> str:
    """``deployment`` for a run the server started (a deployment's run), ``cli`` otherwise."""
    return "deployment" if deployment_id() is not None else "cli"


def run_slot(cfg: PipelineConfig, started: str) -> AbstractContextManager[object]:
    """Runs started on the server queue per output root instead of colliding on its lock; a CLI run does not."""
    from tasks.infra.output_slot import output_root_slot

    if started == "deployment":
        return output_root_slot(Path(cfg.data.output_dir).resolve(), get_run_logger())
    return nullcontext()


def start_run_folder(cfg: PipelineConfig, preset: str | None) -> Path:
    """This flow run's folder with its ``config.json``; the merged configuration logged and as an artifact."""
    from tasks.core.pseudonyms import root_salt
    from tasks.infra.lifecycle import watch_flow_run

    watch_flow_run()  # a kill -9 of the command leaves this run Crashed, not Running for ever
    # The output root's salt first: every served page under it (reports) names a patient alike.
    root_salt(Path(cfg.data.output_dir).resolve())
    run_dir = run_folder(Path(cfg.data.output_dir).resolve(), flow_run.name, flow_run.id)
    merged = cfg.model_dump(mode="json")
    atomic_write_json(run_dir / "config.json", {"preset": preset, "config": merged})
    get_run_logger().info("configuration (defaults < preset < deployment config < run config < paths): %s",
                          json.dumps(merged, sort_keys=True))
    create_markdown_artifact(f"```json\n{json.dumps({'preset': preset, 'config': merged}, indent=1)}\n```",
                             key="pipeline-config", description="The merged configuration this run used")
    return run_dir


def finish_run(cfg: PipelineConfig, preset: str | None, note: str | None, run_dir: Path,
               prepared: dict[str, Any], evaluate_cfg: EvaluateConfig, evaluated: dict[str, Any]) -> dict[str, Any]:
    """Link the run folder to its three outputs, write ``run.json``, publish the artifacts; the outputs."""
    from tasks.core.run_folder import chosen_checkpoint

    model_dir = Path(evaluate_cfg.run_dir)
    root = Path(cfg.data.output_dir).resolve()
    link_outputs(run_dir, cfg, evaluate_cfg)
    outputs = {
        "run_dir": str(run_dir),
        "manifest": prepared["manifest"],
        "cohort_summary": prepared["summary"],
        "checkpoint": str(chosen_checkpoint(model_dir)),
        "history": str(model_dir / "history.csv"),
        "predictions": evaluated["predictions"],
        "metrics": evaluated["metrics"],
        "report": evaluated["report"],
        "note": note,
    }
    atomic_write_json(run_dir / "run.json", {"preset": preset, "config": cfg.model_dump(mode="json"), **outputs})
    publish_pipeline(cfg, root, run_dir, outputs, note)
    get_run_logger().info("outputs in %s (report: %s)", run_dir, evaluated["report"])
    return outputs


def pipeline_run_name() -> str:
    """``pipeline demo vgg16_bn 64px``: what will run; never raises (a bad parameter fails the run later).

    The model and image size are those training will use: after the deployment's stored
    config, the run's config and the fall-back to scratch (no ImageNet weights here), and
    the training image size (the slices may be stored larger).
    """
    try:
        params = flow_run.parameters
        preset = params.get("preset")
        if preset is not None and preset not in list_presets():
            return "pipeline (unknown preset)"
        explicit = explicit_settings(params.get("config"))
        stored = deployment_defaults("config") if deployment_id() is not None else None
        if isinstance(stored, dict):
            explicit = merge_config(stored, explicit)
        cfg, _ = weights_or_scratch(pipeline_config(preset=preset, base=explicit))
        label = preset or cfg.slices.strategy
        return f"pipeline {label} {cfg.model.model} {cfg.train.image_size}px"
    except Exception:  # noqa: BLE001 - a run name never fails the run
        return "pipeline (invalid parameters)"
