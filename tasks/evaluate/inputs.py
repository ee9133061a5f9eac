"""What an evaluation reads: the run folder's checkpoint and training configuration, the manifest, the split.

Plain functions the ``evaluate-model`` flow (:mod:`flows.evaluate`) calls before its tasks,
including where an external collection's manifest comes from (:func:`external_data`: a
manifest as given, or a data root the flow prepares like the training data first).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.core.config import DataConfig, EvaluateConfig, PrepareConfig, SlicesConfig


def run_inputs(cfg: EvaluateConfig) -> tuple[Path, Path, Path, dict[str, Any]]:
    """(checkpoint, manifest, output folder (made), training config) of the run to evaluate."""
    from tasks.core.run_folder import chosen_checkpoint

    run = Path(cfg.run_dir)
    config_path = run / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{run}: no config.json: is this a training run folder (tomoflow train --out RUN)?")
    train_conf = json.loads(config_path.read_text())
    checkpoint = chosen_checkpoint(run)
    if not checkpoint.is_file():
        raise ValueError(f"{run}: neither best.pt nor last.pt exists; train the model first")
    manifest = Path(cfg.manifest or train_conf["manifest"])
    if not manifest.is_file():
        raise ValueError(f"manifest {manifest} does not exist; pass --manifest")
    out = Path(cfg.output_dir or (run / "external" if cfg.external else run))
    out.mkdir(parents=True, exist_ok=True)
    return checkpoint, manifest, out, train_conf


def png_size_of(manifest: Path, default: int) -> int:
    """The PNG (letterbox) size the manifest's images were prepared at (its cohort_summary.json), else ``default``."""
    from tasks.evaluate.generalization import external_prepare_settings

    return int(external_prepare_settings(manifest).get("image_size") or default)


def recorded_data_root(manifest: Path) -> str | None:
    """The data root prepare read (its cohort_summary.json), where the manifest's source_path values lie."""
    summary = manifest.parent / "cohort_summary.json"
    try:
        return json.loads(summary.read_text()).get("data_root") if summary.is_file() else None
    except (OSError, ValueError):
        return None


def evaluated_split(cfg: EvaluateConfig) -> str:
    """The rows evaluated: ``external_split`` of an external collection, else ``split``."""
    return cfg.external_split if cfg.external else cfg.split


def external_data(cfg: EvaluateConfig, training_manifest: Path, out: Path) -> tuple[Path, PrepareConfig | None]:
    """The manifest of ``cfg.external``, and the prepare-data configuration that writes it first, if any.

    A manifest is used as it is (``None``); a data root is prepared like the training data
    (its strategy and image size) into ``out/prepared``, one class allowed: the flow runs
    ``prepare-data`` with the returned configuration and evaluates the manifest it writes.
    """
    from tasks.evaluate.generalization import external_prepare_settings, external_source
    from tasks.infra.lifecycle import run_logger

    kind, path = external_source(cfg.external or "")
    if kind == "manifest":
        return path, None
    settings = external_prepare_settings(training_manifest)
    run_logger(__name__).info("preparing the external data root like the training data: %s", settings)
    prepare = PrepareConfig(
        data=DataConfig(data_root=str(path), output_dir=str(out / "prepared")),
        # Evaluated only: one class (all-normal screening data) is allowed; AUC is then marked not computable.
        slices=SlicesConfig(**settings, require_both_classes=False))
    return out / "prepared" / "manifest.parquet", prepare  # where prepare-data publishes it
