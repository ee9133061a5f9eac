"""The ``tomoflow-pipeline`` flow: prepare, train and evaluate as subflows, from one form.

Heavy outputs are content-addressed under the output root, so a rerun with nothing
changed reuses every step and a retry after a failed training starts at training:

* ``prepared/<strategy>-<size>px-<key>/``: the prepare-data output (manifest, slices);
* ``models/<model>-<optimizer>-<key>/``: the training run (checkpoints, history), keyed on
  the manifest's content and the training configuration;
* ``evaluations/<key>/``: predictions, metrics and the report;
* ``runs/<flow run name>-<id>/``: this flow run's folder, with links to the three above
  and ``run.json``; the flow run links to it with a markdown artifact.

The steps live in :mod:`tasks.pipeline.steps` and the folder layout in :mod:`tasks.infra.runners`;
this module only calls them in order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from models.checkpoint import chosen_checkpoint
from flows.evaluate import evaluate_model
from flows.prepare import prepare_data
from flows.train import train_classifier
from tasks.infra import runners as runtime
from tasks.core.config import PipelineConfig, PrepareConfig, TrainConfig
from tasks.core.files import atomic_write_json
from tasks.pipeline.steps import (
    preflight,
    publish_pipeline,
    resolve_config,
    run_training_deployment,
    weights_or_scratch,
)
from tasks.pipeline.comparison import comparison_row, floor_rows, write_comparison
from tasks.infra.output_slot import output_root_slot
from tasks.core.presets import PresetName, explicit_settings, list_presets, merge_config, pipeline_config
from tasks.infra.environment import deployment_defaults, deployment_id


def _run_name() -> str:
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
    except Exception:
        return "pipeline (invalid parameters)"


@flow(name="tomoflow-pipeline", flow_run_name=_run_name, log_prints=True, validate_parameters=False)
def tomoflow_pipeline(
    data_root: str | None = None,
    output_root: str | None = None,
    preset: PresetName | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Prepare the data, train the classifier and evaluate it, as subflows.

    Parameters are checked by :func:`~tasks.pipeline.steps.resolve_config` (not by Prefect), so that a wrong one fails
    the run with a one-line message saying what to change.

    Args:
        data_root: Folder with the BCS-DBT CSVs and images; default: the worker's TOMOFLOW_DATA_ROOT.
        output_root: Root of all outputs, outside the code checkout; default: TOMOFLOW_OUTPUT_ROOT.
        preset: A study preset from configs/ (demo, m1-baseline, ...). None (empty): no preset, the defaults
            of tasks/core/config.py (all slices, VGG16 from ImageNet, SGD, 224 px) with this deployment's config.
        config: Settings over the preset, by section, e.g. {"train": {"epochs": 5}} or
            {"model": {"weights": "none"}} to train from scratch (see tasks/core/config.py for every field).
            Merged into the deployment's stored config; wins over the preset.

    Returns:
        The run folder and the paths of the manifest, checkpoint, metrics and report.
    """
    logger = get_run_logger()
    cfg, note = weights_or_scratch(resolve_config(config, data_root, output_root, preset))
    if note:
        logger.warning(note)
    started_by = "deployment" if deployment_id() is not None else "cli"
    preflight(cfg, started_by)
    root = Path(cfg.data.output_dir).resolve()
    if started_by == "deployment":
        # Runs started on the server queue per output root instead of colliding on its lock.
        with output_root_slot(root, logger):
            return _run_pipeline(cfg, root, preset, note)
    return _run_pipeline(cfg, root, preset, note)


def _run_pipeline(cfg: PipelineConfig, root: Path, preset: str | None, note: str | None) -> dict[str, Any]:
    """The pipeline's body once its configuration is checked: prepare, train, evaluate, publish."""
    logger = get_run_logger()
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
        run_training_deployment(cfg.train_deployment, train_cfg)
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
        "checkpoint": str(chosen_checkpoint(model_dir)),
        "history": str(model_dir / "history.csv"),
        "predictions": evaluated["predictions"],
        "metrics": evaluated["metrics"],
        "report": evaluated["report"],
        "note": note,
    }
    atomic_write_json(run_dir / "run.json", {"preset": preset, "config": merged, **outputs})
    publish_pipeline(cfg, root, run_dir, outputs, note)
    logger.info("outputs in %s (report: %s)", run_dir, evaluated["report"])
    return outputs


@flow(name="tomoflow-experiments", log_prints=True)
def run_experiments(data_root: str, output_root: str, presets: list[str] | None = None,
                    overrides: dict[str, Any] | None = None, weights: str = "preset") -> dict[str, str]:
    """Run the study's experiments (one pipeline per preset; one prepared manifest per strategy
    and image size, shared) and write ``comparison.md`` and ``comparison.csv``.

    Every preset's configuration and starting weights are checked before any data is prepared
    (:func:`tasks.pipeline.experiments.plan_experiments`); presets whose effective configurations are
    equal run once, as one row naming both.

    Args:
        data_root: Folder with the BCS-DBT CSVs and images.
        output_root: Root of all outputs; the comparison goes here.
        presets: Preset names; default: the study's sequence (:data:`tasks.core.presets.STUDY_PRESETS`).
        overrides: Settings applied over every preset (e.g. fewer epochs for a smoke run).
        weights: ``"preset"`` (each preset's own) or ``"none"`` (every preset from scratch).
    """
    from tasks.pipeline.experiments import plan_experiments

    logger = get_run_logger()
    runs = plan_experiments(presets, data_root=data_root, output_root=output_root, overrides=overrides,
                            weights=weights)
    rows = []
    floors: dict[str, list[dict[str, Any]]] = {}
    for names, cfg, note in runs:
        if len(names) > 1:
            logger.info("presets %s have the same effective configuration: one run, one row", ", ".join(names))
        outputs = tomoflow_pipeline.with_options(flow_run_name=f"experiment {'+'.join(names)}")(config=cfg,
                                                                                              preset=None)
        if note and not outputs.get("note"):
            outputs = {**outputs, "note": note}
        rows.append(comparison_row(names, cfg, outputs))
        if cfg.slices.strategy not in floors:
            floors[cfg.slices.strategy] = floor_rows(cfg, outputs)
    return write_comparison(rows, floors, Path(output_root))
