"""The ``tomoflow-pipeline`` flow: prepare, train and evaluate as subflows, from one form.

Heavy outputs are content-addressed under the output root, so a rerun with nothing
changed reuses every step and a retry after a failed training starts at training:

* ``prepared/<strategy>-<size>px-<key>/``: the prepare-data output (manifest, slices);
* ``models/<model>-<optimizer>-<key>/``: the training run (checkpoints, history), keyed on
  the manifest's content and the training configuration;
* ``evaluations/<key>/``: predictions, metrics and the report;
* ``runs/<flow run name>-<id>/``: this flow run's folder, with links to the three above
  and ``run.json``; the flow run links to it with a markdown artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import ValidationError

from flows.evaluate import evaluate_model
from flows.prepare import prepare_data
from flows.train import train_classifier
from tasks.config import PipelineConfig, PrepareConfig, TrainConfig
from tasks import runtime
from tasks.io import atomic_write_json
from tasks.presets import PresetName, check_preset, explicit_settings, list_presets, merge_config, pipeline_config
from tasks.service import (DATA_VAR, OUTPUT_VAR, ServiceConfigError, deployment_defaults, deployment_id,
                           flow_run_url, one_line, outputs_url, resolve_root, validation_message)


def _resolve(config: PipelineConfig | dict[str, Any] | None, data_root: str | None, output_root: str | None,
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


def _run_name() -> str:
    """``pipeline demo vgg16 96px``; never raises (a bad parameter fails the run later, with its reason)."""
    try:
        params = flow_run.parameters
        preset = params.get("preset")
        if preset is not None and preset not in list_presets():
            return "pipeline (unknown preset)"
        cfg = pipeline_config(preset=preset, base=explicit_settings(params.get("config")))
        label = preset or cfg.slices.strategy
        return f"pipeline {label} {cfg.model.model} {cfg.slices.image_size}px"
    except Exception:
        return "pipeline (invalid parameters)"


def _weights_or_scratch(cfg: PipelineConfig) -> tuple[PipelineConfig, str | None]:
    """Keep the configured weights, or fall back to scratch (with a note) where allowed."""
    if cfg.model.weights != "imagenet" or not cfg.scratch_if_no_weights:
        return cfg, None
    from models.backbones import WeightsNotFoundError, resolve_weights

    try:
        resolve_weights(cfg.model.model, cfg.model.weights)
        return cfg, None
    except WeightsNotFoundError as exc:
        from tasks.presets import scratch_config

        scratch = scratch_config(cfg)
        rates = f"lr {scratch.train.lr:g}" + (
            f", backbone {scratch.train.lr * scratch.train.backbone_lr_factor:g}"
            if scratch.train.backbone_lr_factor != 1 else "")
        note = (f"ImageNet weights are not in torchvision's cache, so this run trains {scratch.model.model} FROM "
                f"SCRATCH ({scratch.train.optimizer}, {rates}; its figures are not transfer-learning "
                f"figures). {exc}")
        return scratch, note


def _check_local_weights(cfg: PipelineConfig) -> None:
    """Training in this process: its starting weights must be here, checked before preparing."""
    from models.backbones import resolve_weights

    try:
        resolve_weights(cfg.model.model, cfg.model.weights)
    except (FileNotFoundError, ValueError) as exc:
        raise ServiceConfigError(one_line(str(exc))) from None


class ChildRunFailed(RuntimeError):
    """A deployment the pipeline handed work to did not complete; the message carries its reason."""


def _child_reason(state: Any) -> str:
    message = (getattr(state, "message", None) or "").strip()
    # The child's message starts with Prefect's own prefix; the operator wants what follows.
    for prefix in ("Flow run encountered an exception: ",):
        message = message.replace(prefix, "")
    return one_line(message or "no message", limit=400)


def _run_training_deployment(name: str, train_cfg: TrainConfig) -> None:
    """Training as deployment ``name`` (the GPU pool); its failure reason and link become this run's."""
    from prefect.deployments import run_deployment

    child = run_deployment(name, parameters={"config": train_cfg.model_dump(mode="json")}, timeout=None,
                           as_subflow=True)
    if child.state is None or not child.state.is_completed():
        state_name = child.state.name if child.state else "unknown"
        raise ChildRunFailed(f"training deployment {name} ended {state_name}: {_child_reason(child.state)} "
                             f"(child run: {flow_run_url(child.id)})")


def _publish(cfg: PipelineConfig, root: Path, run_dir: Path, outputs: dict[str, Any], note: str | None) -> None:
    """The pipeline run's own artifacts: the evaluation summary with learning curves and report link."""
    from tasks.dashboard import learning_curves_png, pipeline_summary_markdown

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


@flow(name="tomoflow-pipeline", flow_run_name=_run_name, log_prints=True, validate_parameters=False)
def tomoflow_pipeline(
    data_root: str | None = None,
    output_root: str | None = None,
    preset: PresetName | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Prepare the data, train the classifier and evaluate it, as subflows.

    Parameters are checked by :func:`_resolve` (not by Prefect), so that a wrong one fails
    the run with a one-line message saying what to change.

    Args:
        data_root: Folder with the BCS-DBT CSVs and images; default: the worker's TOMOFLOW_DATA_ROOT.
        output_root: Root of all outputs, outside the code checkout; default: TOMOFLOW_OUTPUT_ROOT.
        preset: A study preset from configs/ (demo, m1-baseline, ...); none: the defaults.
        config: Settings over the preset, by section, e.g. {"train": {"epochs": 5}} (a
            :class:`~tasks.config.PipelineConfig` or its dict; see tasks/config.py for every
            field). Merged into the deployment's stored config; wins over the preset.

    Returns:
        The run folder and the paths of the manifest, checkpoint, metrics and report.
    """
    logger = get_run_logger()
    cfg, note = _weights_or_scratch(_resolve(config, data_root, output_root, preset))
    if note:
        logger.warning(note)
    if not cfg.train_deployment:
        _check_local_weights(cfg)
    root = Path(cfg.data.output_dir).resolve()
    run_dir = runtime.run_folder(root, flow_run.name, flow_run.id)
    merged = cfg.model_dump(mode="json")
    atomic_write_json(run_dir / "config.json", {"preset": preset, "config": merged})
    logger.info("configuration (defaults < preset < deployment config < run config < paths): %s",
                json.dumps(merged, sort_keys=True))
    create_markdown_artifact(f"```json\n{json.dumps({'preset': preset, 'config': merged}, indent=1)}\n```",
                             key="pipeline-config", description="The merged configuration this run used")
    s = cfg.slices
    prepared_dir = runtime.prepared_dir(root, cfg)
    prepared = prepare_data(config=PrepareConfig(
        data=cfg.data.model_copy(update={"output_dir": str(prepared_dir)}), slices=s, reports=cfg.reports))

    model_dir = runtime.model_dir(root, cfg, prepared["manifest"])
    train_cfg = TrainConfig(manifest=prepared["manifest"], run_dir=str(model_dir), model=cfg.model,
                            train=cfg.train, augment=cfg.augment)
    if cfg.train_deployment:
        logger.info("training runs as deployment %s", cfg.train_deployment)
        _run_training_deployment(cfg.train_deployment, train_cfg)
    else:
        train_classifier(config=train_cfg)

    eval_dir = runtime.evaluation_dir(root, cfg, model_dir)
    evaluated = evaluate_model(config=cfg.evaluate.model_copy(update={
        "run_dir": str(model_dir), "manifest": prepared["manifest"], "output_dir": str(eval_dir)}))

    for name, target in (("prepared", prepared_dir), ("model", model_dir), ("evaluation", eval_dir)):
        runtime.link(run_dir / name, target)
    outputs = {
        "run_dir": str(run_dir),
        "manifest": prepared["manifest"],
        "cohort_summary": prepared["summary"],
        "checkpoint": str(model_dir / "best.pt") if (model_dir / "best.pt").is_file() else str(model_dir / "last.pt"),
        "history": str(model_dir / "history.csv"),
        "predictions": evaluated["predictions"],
        "metrics": evaluated["metrics"],
        "report": evaluated["report"],
        "note": note,
    }
    atomic_write_json(run_dir / "run.json", {"preset": preset, "config": merged, **outputs})
    _publish(cfg, root, run_dir, outputs, note)
    logger.info("outputs in %s (report: %s)", run_dir, evaluated["report"])
    return outputs


_COMPARED = ("accuracy", "sensitivity", "specificity", "roc_auc")


def _comparison_row(preset: str, cfg: PipelineConfig, outputs: dict[str, Any]) -> dict[str, Any]:
    from tasks.presets import preset_description

    metrics = json.loads(Path(outputs["metrics"]).read_text())
    import pandas as pd

    history = pd.read_csv(outputs["history"])
    row: dict[str, Any] = {
        "preset": preset, "description": preset_description(preset), "strategy": cfg.slices.strategy,
        "model": cfg.model.model, "weights": cfg.model.weights, "head": cfg.model.head,
        "optimizer": cfg.train.optimizer, "image_size": cfg.train.image_size, "epochs_run": int(len(history)),
    }
    row.update(_metric_cells(metrics))
    row["note"] = outputs.get("note") or ""
    row["report"] = outputs["report"]
    return row


def _metric_cells(metrics: dict[str, Any]) -> dict[str, Any]:
    """The compared figures of one metrics.json, with intervals and the random-score null AUC."""
    cells: dict[str, Any] = {}
    for level in ("patient", "slice"):
        values = metrics["levels"][level]
        for name in _COMPARED:
            low_high = (values.get("intervals") or {}).get(name) or [None, None]
            cells[f"{level}_{name}"] = values["metrics"].get(name)
            cells[f"{level}_{name}_low"], cells[f"{level}_{name}_high"] = low_high
        cells[f"{level}_null_roc_auc"] = values.get("null_roc_auc")
    return cells


def _floor_rows(cfg: PipelineConfig, outputs: dict[str, Any]) -> list[dict[str, Any]]:
    """A constant and a random scorer on the test images of one strategy's run: the floor to read against."""
    import pandas as pd

    from tasks.metrics import floor_scorers

    e, strategy = cfg.evaluate, cfg.slices.strategy
    floors = floor_scorers(pd.read_parquet(outputs["predictions"]), how=e.aggregate, threshold=e.threshold,
                           bootstrap=e.bootstrap, ci=e.ci, seed=e.seed)
    what = {"constant": f"P(tumour) = {e.threshold:g} for every image", "random": "seeded uniform random scores"}
    return [{"preset": f"floor-{name}", "description": f"{name} scorer ({what[name]}) on the {strategy} test images",
             "strategy": strategy, "model": f"{name} scorer", "weights": "", "head": "", "optimizer": "",
             "image_size": cfg.train.image_size, "epochs_run": 0, **_metric_cells(metrics),
             "note": "", "report": ""} for name, metrics in floors.items()]


def _fmt(value: Any, low: Any, high: Any) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.3f}"
    return text + (f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")


@flow(name="tomoflow-experiments", log_prints=True)
def run_experiments(data_root: str, output_root: str, presets: list[str] | None = None,
                    overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """Run the study's experiments (one pipeline per preset; one prepared manifest per strategy
    and image size, shared) and write ``comparison.md`` and ``comparison.csv``.

    Args:
        data_root: Folder with the BCS-DBT CSVs and images.
        output_root: Root of all outputs; the comparison goes here.
        presets: Preset names; default: the study's sequence (:data:`tasks.presets.STUDY_PRESETS`).
        overrides: Settings applied over every preset (e.g. fewer epochs for a smoke run).
    """
    import pandas as pd

    from tasks.io import atomic_write_text
    from tasks.presets import STUDY_PRESETS, _merge, load_preset

    rows = []
    floors: dict[str, list[dict[str, Any]]] = {}
    for name in presets or STUDY_PRESETS:
        merged = _merge(load_preset(name), overrides or {})
        cfg = pipeline_config(data_root=data_root, output_root=output_root, base=merged)
        outputs = tomoflow_pipeline.with_options(flow_run_name=f"experiment {name}")(config=cfg, preset=None)
        rows.append(_comparison_row(name, _weights_or_scratch(cfg)[0], outputs))
        if cfg.slices.strategy not in floors:
            floors[cfg.slices.strategy] = _floor_rows(cfg, outputs)
    rows += [row for pair in floors.values() for row in pair]
    table = pd.DataFrame(rows)
    out = Path(output_root)
    csv_path = atomic_write_text(out / "comparison.csv", table.to_csv(index=False))
    lines = ["# tomoflow: the study's experiments", "",
             "Patient-level figures with 95% bootstrap intervals (patients resampled); slice level in the CSV. "
             "Read them against the floor: the floor-constant and floor-random rows score the same test images "
             "with no model, and \"random AUC\" is what shuffled scores reach when aggregated the same way.", "",
             "| preset | strategy | model | weights | head | optimizer | px | epochs | accuracy | sensitivity | "
             "specificity | ROC AUC | random AUC |", "|" + "---|" * 13]
    for r in rows:
        cells = [_fmt(r[f"patient_{m}"], r[f"patient_{m}_low"], r[f"patient_{m}_high"]) for m in _COMPARED]
        cells.append(_fmt(r["patient_null_roc_auc"], None, None))
        lines.append(f"| {r['preset']} | {r['strategy']} | {r['model']} | {r['weights']} | {r['head']} | "
                     f"{r['optimizer']} | {r['image_size']} | {r['epochs_run']} | " + " | ".join(cells) + " |")
    notes = [f"- {r['preset']}: {r['note']}" for r in rows if r["note"]]
    if notes:
        lines += ["", "Notes:", *notes]
    md_path = atomic_write_text(out / "comparison.md", "\n".join(lines) + "\n")
    return {"comparison_md": str(md_path), "comparison_csv": str(csv_path)}
