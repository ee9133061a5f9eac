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
import os
import re
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.evaluate import evaluate_model
from flows.prepare import prepare_data
from flows.train import train_classifier
from tasks.config import EvaluateConfig, PipelineConfig, PrepareConfig, TrainConfig
from tasks.io import atomic_write_json, file_fingerprint
from tasks.presets import pipeline_config, short_key


def _resolve(config: PipelineConfig | dict[str, Any] | None, data_root: str | None, output_root: str | None,
             preset: str | None) -> PipelineConfig:
    # A scheduled deployment carries no paths: the worker's environment says where the data is.
    data_root = data_root or os.environ.get("TOMOFLOW_DATA_ROOT") or None
    output_root = output_root or os.environ.get("TOMOFLOW_OUTPUT_ROOT") or None
    return pipeline_config(preset=preset, data_root=data_root, output_root=output_root, base=config)


def _run_name() -> str:
    params = flow_run.parameters
    cfg = _resolve(params.get("config"), params.get("data_root"), params.get("output_root"), params.get("preset"))
    label = params.get("preset") or cfg.slices.strategy
    return f"pipeline {label} {cfg.model.model} {cfg.slices.image_size}px"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


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


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)


@flow(name="tomoflow-pipeline", flow_run_name=_run_name, log_prints=True)
def tomoflow_pipeline(
    config: PipelineConfig | None = None,
    data_root: str | None = None,
    output_root: str | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    """Prepare the data, train the classifier and evaluate it, as subflows.

    Args:
        config: The whole configuration (the form in the Prefect UI); defaults apply where absent.
        data_root: Folder with the BCS-DBT CSVs and images (overrides ``config.data.data_root``).
        output_root: Root of all outputs (overrides ``config.data.output_dir``).
        preset: A name from ``configs/`` (``demo``, ``m1-baseline``, ...) applied over ``config``.

    Returns:
        The run folder and the paths of the manifest, checkpoint, metrics and report.
    """
    logger = get_run_logger()
    cfg, note = _weights_or_scratch(_resolve(config, data_root, output_root, preset))
    if note:
        logger.warning(note)
    root = Path(cfg.data.output_dir).resolve()
    s = cfg.slices

    prep_key = short_key(cfg.data.data_root, cfg.data.reports, cfg.data.use_labels, cfg.reports.model_dump(mode="json"),
                         s.model_dump(mode="json", exclude={"executor", "workers", "shard_size", "dask_address"}))
    prepared_dir = root / "prepared" / f"{s.strategy}-{s.image_size}px-{prep_key}"
    prepared = prepare_data(config=PrepareConfig(
        data=cfg.data.model_copy(update={"output_dir": str(prepared_dir)}), slices=s, reports=cfg.reports))

    model_key = short_key(file_fingerprint(prepared["manifest"]), cfg.model.model_dump(mode="json"),
                          cfg.train.model_dump(mode="json", exclude={"device", "num_workers"}),
                          cfg.augment.model_dump(mode="json"))
    model_dir = root / "models" / f"{cfg.model.model}-{cfg.train.optimizer}-{model_key}"
    train_cfg = TrainConfig(manifest=prepared["manifest"], run_dir=str(model_dir), model=cfg.model,
                            train=cfg.train, augment=cfg.augment)
    if cfg.train_deployment:
        from prefect.deployments import run_deployment

        logger.info("training runs as deployment %s", cfg.train_deployment)
        child = run_deployment(cfg.train_deployment, parameters={"config": train_cfg.model_dump(mode="json")},
                               timeout=None, as_subflow=True)
        if child.state is None or not child.state.is_completed():
            raise RuntimeError(f"training deployment {cfg.train_deployment} ended in state "
                               f"{child.state.name if child.state else 'unknown'}; see flow run {child.id}")
    else:
        train_classifier(config=train_cfg)

    eval_dir = root / "evaluations" / short_key(model_dir.name, cfg.evaluate.model_dump(
        mode="json", exclude={"device", "run_dir", "manifest", "output_dir"}))
    evaluated = evaluate_model(config=cfg.evaluate.model_copy(update={
        "run_dir": str(model_dir), "manifest": prepared["manifest"], "output_dir": str(eval_dir)}))

    run_dir = root / "runs" / f"{_slug(flow_run.name or 'pipeline')}-{str(flow_run.id or '')[:8]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, target in (("prepared", prepared_dir), ("model", model_dir), ("evaluation", eval_dir)):
        _link(run_dir / name, target)
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
    atomic_write_json(run_dir / "run.json", {"preset": preset, "config": cfg.model_dump(mode="json"), **outputs})
    create_markdown_artifact(
        "\n".join([f"# Outputs of {flow_run.name}", "", f"- run folder: `{run_dir}`",
                   f"- report: [report.html](file://{evaluated['report']})",
                   f"- metrics: `{evaluated['metrics']}`", f"- manifest: `{prepared['manifest']}`",
                   f"- checkpoint: `{outputs['checkpoint']}`", *([f"\n> {note}"] if note else [])]),
        key="pipeline-outputs", description="Where this pipeline run's outputs are")
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
    for level in ("patient", "slice"):
        values = metrics["levels"][level]
        for name in _COMPARED:
            low_high = (values.get("intervals") or {}).get(name) or [None, None]
            row[f"{level}_{name}"] = values["metrics"].get(name)
            row[f"{level}_{name}_low"], row[f"{level}_{name}_high"] = low_high
    row["note"] = outputs.get("note") or ""
    row["report"] = outputs["report"]
    return row


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
    for name in presets or STUDY_PRESETS:
        merged = _merge(load_preset(name), overrides or {})
        cfg = pipeline_config(data_root=data_root, output_root=output_root, base=merged)
        outputs = tomoflow_pipeline.with_options(flow_run_name=f"experiment {name}")(config=cfg, preset=None)
        rows.append(_comparison_row(name, _weights_or_scratch(cfg)[0], outputs))
    table = pd.DataFrame(rows)
    out = Path(output_root)
    csv_path = atomic_write_text(out / "comparison.csv", table.to_csv(index=False))
    lines = ["# tomoflow: the study's experiments", "",
             "Patient-level figures with 95% bootstrap intervals (patients resampled); slice level in the CSV.", "",
             "| preset | strategy | model | weights | head | optimizer | px | epochs | accuracy | sensitivity | "
             "specificity | ROC AUC |", "|" + "---|" * 12]
    for r in rows:
        cells = [_fmt(r[f"patient_{m}"], r[f"patient_{m}_low"], r[f"patient_{m}_high"]) for m in _COMPARED]
        lines.append(f"| {r['preset']} | {r['strategy']} | {r['model']} | {r['weights']} | {r['head']} | "
                     f"{r['optimizer']} | {r['image_size']} | {r['epochs_run']} | " + " | ".join(cells) + " |")
    notes = [f"- {r['preset']}: {r['note']}" for r in rows if r["note"]]
    if notes:
        lines += ["", "Notes:", *notes]
    md_path = atomic_write_text(out / "comparison.md", "\n".join(lines) + "\n")
    return {"comparison_md": str(md_path), "comparison_csv": str(csv_path)}
