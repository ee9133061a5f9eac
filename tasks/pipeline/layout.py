"""The output layout of the ``tomoflow-pipeline`` flow: content-keyed step folders, the run folder's links,
and each subflow's configuration pointed into its folder.

Under the output root, ``prepared/``, ``models/`` and ``evaluations/`` hold one folder per
key (the settings that change that step's output), shared by every run that needs it; each
run's own folder ``runs/<name>-<id>/`` links to the ones it used.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from tasks.core.config import EvaluateConfig, PipelineConfig, PrepareConfig, TrainConfig


def slug(text: str) -> str:
    """``text`` as one folder name: runs of other characters than letters, digits, ``_.-`` become ``-``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def link(link_path: Path, target: Path) -> None:
    """Point the relative symlink ``link_path`` at the folder ``target`` (replacing an old link)."""
    if link_path.is_symlink() or link_path.exists():
        link_path.unlink()
    link_path.symlink_to(os.path.relpath(target, link_path.parent), target_is_directory=True)


def run_folder(root: Path, run_name: str | None, run_id: Any) -> Path:
    """``runs/<flow run name>-<id>/``: the pipeline run's own folder under the output root."""
    return root / "runs" / f"{slug(run_name or 'pipeline')}-{str(run_id or '')[:8]}"


def prepared_dir(root: Path, cfg: PipelineConfig) -> Path:
    """``prepared/<strategy>-<size>px-<key>/``, keyed on every setting that changes the prepared data."""
    from tasks.core.presets import short_key

    s = cfg.slices
    key = short_key(cfg.data.data_root, cfg.data.reports, cfg.data.use_labels, cfg.reports.model_dump(mode="json"),
                    s.model_dump(mode="json", exclude={"executor", "workers", "shard_size", "dask_address"}))
    return root / "prepared" / f"{s.strategy}-{s.image_size}px-{key}"


def model_dir(root: Path, cfg: PipelineConfig, manifest: str) -> Path:
    """``models/<model>-<optimizer>-<key>/``, keyed on the manifest and the training configuration."""
    from tasks.core.files import file_fingerprint
    from tasks.core.presets import short_key

    key = short_key(file_fingerprint(manifest), cfg.model.model_dump(mode="json"),
                    cfg.train.model_dump(mode="json", exclude={"device", "num_workers"}),
                    cfg.augment.model_dump(mode="json"))
    return root / "models" / f"{cfg.model.model}-{cfg.train.optimizer}-{key}"


def evaluation_dir(root: Path, cfg: PipelineConfig, trained: Path) -> Path:
    """``evaluations/<key>/``, keyed on the model folder and the evaluation settings."""
    from tasks.core.presets import short_key

    return root / "evaluations" / short_key(trained.name, cfg.evaluate.model_dump(
        mode="json", exclude={"device", "run_dir", "manifest", "output_dir"}))


def prepare_config(cfg: PipelineConfig) -> PrepareConfig:
    """The prepare-data configuration: the pipeline's data, slice and report settings, into ``prepared/<key>``."""
    out = prepared_dir(Path(cfg.data.output_dir).resolve(), cfg)
    return PrepareConfig(data=cfg.data.model_copy(update={"output_dir": str(out)}), slices=cfg.slices,
                         reports=cfg.reports)


def train_config(cfg: PipelineConfig, manifest: str) -> TrainConfig:
    """The train-classifier configuration: into ``models/<key>``, keyed on the manifest's content."""
    run_dir = model_dir(Path(cfg.data.output_dir).resolve(), cfg, manifest)
    return TrainConfig(manifest=manifest, run_dir=str(run_dir), model=cfg.model, train=cfg.train,
                       augment=cfg.augment)


def evaluate_config(cfg: PipelineConfig, train_cfg: TrainConfig) -> EvaluateConfig:
    """The evaluate-model configuration: the trained run on its manifest, into ``evaluations/<key>``."""
    out = evaluation_dir(Path(cfg.data.output_dir).resolve(), cfg, Path(train_cfg.run_dir))
    return cfg.evaluate.model_copy(update={"run_dir": train_cfg.run_dir, "manifest": train_cfg.manifest,
                                           "output_dir": str(out),
                                           "data_root": cfg.evaluate.data_root or cfg.data.data_root})


def link_outputs(run_dir: Path, cfg: PipelineConfig, evaluate_cfg: EvaluateConfig) -> None:
    """The run folder's links ``prepared``, ``model`` and ``evaluation`` to the keyed folders it used."""
    root = Path(cfg.data.output_dir).resolve()
    for name, target in (("prepared", prepared_dir(root, cfg)), ("model", Path(evaluate_cfg.run_dir)),
                         ("evaluation", Path(evaluate_cfg.output_dir))):
        link(run_dir / name, target)
