"""The ``tomoflow-pipeline`` flow: prepare, train and evaluate as subflows, from one form.

Heavy outputs are content-addressed under the output root, so a rerun with nothing
changed reuses every step and a retry after a failed training starts at training:

* ``prepared/<strategy>-<size>px-<key>/``: the prepare-data output (manifest, slices);
* ``models/<model>-<optimizer>-<key>/``: the training run (checkpoints, history), keyed on
  the manifest's content and the training configuration;
* ``evaluations/<key>/``: predictions, metrics and the report;
* ``runs/<flow run name>-<id>/``: this flow run's folder, with links to the three above
  and ``run.json``; the flow run links to it with a markdown artifact.

The steps live in :mod:`tasks.pipeline.steps` and the folder layout in :mod:`tasks.pipeline.layout`;
this module only calls them in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.evaluate import evaluate_model
from flows.prepare import prepare_data
from flows.train import train_classifier
from tasks.infra.process_defaults import apply_process_defaults
from tasks.pipeline.comparison import comparison_tables, write_comparison
from tasks.pipeline.experiments import plan_experiments
from tasks.pipeline.layout import evaluate_config, prepare_config, train_config
from tasks.pipeline.steps import (
    finish_run,
    pipeline_run_name,
    preflight,
    run_slot,
    run_training_deployment,
    settled_config,
    start_run_folder,
    started_by,
)
from tasks.core.presets import PresetName


@flow(name="tomoflow-pipeline", flow_run_name=pipeline_run_name, log_prints=True, validate_parameters=False)
def tomoflow_pipeline(
    data_root: str | None = None,
    output_root: str | None = None,
    preset: PresetName | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Prepare the data, train the classifier and evaluate it, as subflows.

    Parameters are checked by :func:`~tasks.pipeline.run_config.resolve_config` (not by Prefect), so that a wrong one fails
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
    apply_process_defaults()  # log redaction and the environment defaults, in a deployment's run too
    cfg, note = settled_config(config, data_root, output_root, preset)
    started = started_by()
    preflight(cfg, started)
    with run_slot(cfg, started):
        run_dir = start_run_folder(cfg, preset)
        prepared = prepare_data(config=prepare_config(cfg))
        train_cfg = train_config(cfg, prepared["manifest"])
        if cfg.train_deployment:
            run_training_deployment(cfg.train_deployment, train_cfg)
        else:
            train_classifier(config=train_cfg)
        evaluate_cfg = evaluate_config(cfg, train_cfg)
        evaluated = evaluate_model(config=evaluate_cfg)
        return finish_run(cfg, preset, note, run_dir, prepared, evaluate_cfg, evaluated)


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
    apply_process_defaults()  # log redaction and the environment defaults, in a deployment's run too
    runs = plan_experiments(presets, data_root=data_root, output_root=output_root, overrides=overrides,
                            weights=weights)
    results = [(names, cfg, note, tomoflow_pipeline.with_options(flow_run_name=f"experiment {'+'.join(names)}")(
        config=cfg, preset=None)) for names, cfg, note in runs]
    return write_comparison(*comparison_tables(results), Path(output_root))
