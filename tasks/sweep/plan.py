"""The training-size sweep's plan: its settings, its folder, and every model it trains and evaluates.

Plain functions the ``tomoflow-sweep`` flow (:mod:`flows.sweep`) calls before its runs: the
preset's settings with the sweep's training rules (:func:`sweep_config`), and one
:class:`SweepRun` per starting point, training share and repeat (:func:`sweep_runs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.config import EvaluateConfig, PipelineConfig, TrainConfig
from tasks.core.weights_setting import WeightsSetting

#: Training settings of every sweep arm unless the preset's overrides (--set, --epochs) say otherwise:
#: early stopping on the validation loss once a run has taken ``min_steps`` optimiser steps, so a
#: small subset is not starved by a fixed epoch count; ``epochs`` is only a ceiling (a run that
#: reaches it is marked ``capped``).
SWEEP_TRAINING = {"epochs": 60, "patience": 5, "min_steps": 100}


@dataclass(frozen=True)
class SweepRun:
    """One model of the sweep: its starting point, training share, repeat, run name and subflow configurations.

    A zero-shot run (``fraction`` 0) has no ``train``: its ``evaluate`` reads the starting
    model itself, on the target's test split.
    """

    weights: str
    fraction: float
    repeat: int
    name: str
    train: TrainConfig | None
    evaluate: EvaluateConfig

    def record(self, evaluated: dict[str, Any], trained: dict[str, Any] | None = None) -> dict[str, Any]:
        """What :func:`tasks.sweep.steps.summarise_sweep` reads of this run, once evaluated."""
        keep = ("best_epoch", "epochs_run", "optimizer_steps", "capped", "stopped_early")
        return {"weights": self.weights, "fraction": self.fraction, "repeat": self.repeat,
                "manifest": self.train.manifest if self.train else None, "eval_manifest": self.evaluate.manifest,
                "run_dir": self.train.run_dir if self.train else self.evaluate.output_dir,
                "metrics": evaluated["metrics"], "predictions": evaluated["predictions"],
                "trained": {k: (trained or {}).get(k) for k in keep} if self.train else None}


def sweep_config(data_root: str, output_root: str, preset: str | None,
                 overrides: dict[str, Any] | None) -> PipelineConfig:
    """The preset's settings, :data:`SWEEP_TRAINING` and ``overrides`` over them: what trains and evaluates every model."""
    from tasks.core.presets import load_preset, merge_config, pipeline_config

    merged = merge_config(load_preset(preset) if preset else {}, {"train": dict(SWEEP_TRAINING)})
    merged = merge_config(merged, overrides or {})
    return pipeline_config(data_root=data_root, output_root=output_root, base=merged)


def sweep_dir(cfg: PipelineConfig) -> Path:
    """``<output root>/sweep``: the sweep's runs and its summary."""
    return Path(cfg.data.output_dir).resolve() / "sweep"


def sweep_runs(cfg: PipelineConfig, manifest: str, subsets: dict[int, dict[float, str]],
               weights: list[str]) -> list[SweepRun]:
    """Every (starting point, fraction, repeat) in order, each evaluated on the full manifest's test split.

    Args:
        subsets: repeat -> fraction -> the subset's manifest.

    A starting point that is an earlier tomoflow model first gets a zero-shot run (fraction 0):
    that model on the test split before any fine-tuning. Repeat ``r`` trains with seed
    ``train.seed + r`` on its own subsets.
    """
    from tasks.sweep.analysis import start_label, weights_label

    runs = []
    for start in weights:  # zero-shot runs first: their overlap audit stops a leaking sweep before any training
        label = weights_label(start)
        source = WeightsSetting.verify(start).checkpoint()
        if source is not None:
            out = sweep_dir(cfg) / "runs" / f"{label}-zero-shot"
            runs.append(SweepRun(weights=start, fraction=0.0, repeat=0, name=f"sweep {start_label(start)} zero-shot",
                                 train=None, evaluate=cfg.evaluate.model_copy(update={
                                     "run_dir": str(source.parent), "manifest": manifest, "output_dir": str(out)})))
    for start in weights:
        label = weights_label(start)
        for repeat, by_fraction in sorted(subsets.items()):
            for fraction, subset in sorted(by_fraction.items()):
                run_dir = sweep_dir(cfg) / "runs" / f"{label}-f{round(fraction * 1000):04d}-r{repeat}"
                runs.append(SweepRun(
                    weights=start, fraction=fraction, repeat=repeat,
                    name=f"sweep {start_label(start)} {fraction:g} r{repeat}",
                    train=TrainConfig(manifest=subset, run_dir=str(run_dir),
                                      model=cfg.model.model_copy(update={"weights": WeightsSetting.verify(start)}),
                                      train=cfg.train.model_copy(update={"seed": cfg.train.seed + repeat}),
                                      augment=cfg.augment),
                    evaluate=cfg.evaluate.model_copy(update={"run_dir": str(run_dir), "manifest": manifest,
                                                             "output_dir": str(run_dir / "evaluation")})))
    return runs
