"""Steps of the ``tomoflow-sweep`` flow: Prefect tasks over :mod:`tasks.sweep.analysis`, and the runs' plan."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks.core.config import EvaluateConfig, PipelineConfig, TrainConfig
from tasks.infra.caching import content_cache_key_fn
from tasks.infra.retry import retry_policy


@task(name="write-sweep-subsets", cache_key_fn=content_cache_key_fn(files=("manifest",)), persist_result=True,
      **retry_policy(retries=1, delay_seconds=1))
def write_sweep_subsets(manifest: str, fractions: list[float], seed: int) -> dict[float, str]:
    """The nested, stratified training subsets, each as a manifest beside the full one."""
    import pandas as pd

    from tasks.sweep.analysis import nested_train_subsets, write_subset_manifest

    subsets = nested_train_subsets(pd.read_parquet(manifest), fractions, seed=seed)
    return {f: str(write_subset_manifest(manifest, patients, f)) for f, patients in subsets.items()}


@task(name="summarise-sweep", **retry_policy(retries=1, delay_seconds=1))
def summarise_sweep(runs: list[dict[str, Any]], out_dir: str, bootstrap: int, ci: float, seed: int) -> dict[str, str]:
    """The sweep's table, paired differences and plot, and its ``training-size-sweep`` artifact."""
    from tasks.sweep.analysis import sweep_differences, sweep_table, write_sweep_outputs

    table = sweep_table(runs)
    differences = sweep_differences(runs, n=bootstrap, ci=ci, seed=seed)
    paths = write_sweep_outputs(out_dir, table, differences)
    create_markdown_artifact(Path(paths["markdown"]).read_text(), key="training-size-sweep",
                             description=f"Image-level AUC against training patients ({out_dir})")
    get_run_logger().info("sweep table: %s, plot: %s", paths["table"], paths["plot"])
    return paths


@dataclass(frozen=True)
class SweepRun:
    """One model of the sweep: its starting point, training share, run name and subflow configurations."""

    weights: str
    fraction: float
    name: str
    train: TrainConfig
    evaluate: EvaluateConfig

    def record(self, evaluated: dict[str, Any]) -> dict[str, Any]:
        """What :func:`summarise_sweep` reads of this run, once evaluated."""
        return {"weights": self.weights, "fraction": self.fraction, "manifest": self.train.manifest,
                "run_dir": self.train.run_dir, "metrics": evaluated["metrics"],
                "predictions": evaluated["predictions"]}


def sweep_config(data_root: str, output_root: str, preset: str | None,
                 overrides: dict[str, Any] | None) -> PipelineConfig:
    """The preset's settings with ``overrides`` over them: what trains and evaluates every model."""
    from tasks.core.presets import load_preset, merge_config, pipeline_config

    merged = merge_config(load_preset(preset) if preset else {}, overrides or {})
    return pipeline_config(data_root=data_root, output_root=output_root, base=merged)


def sweep_dir(cfg: PipelineConfig) -> Path:
    """``<output root>/sweep``: the sweep's runs and its summary."""
    return Path(cfg.data.output_dir).resolve() / "sweep"


def sweep_runs(cfg: PipelineConfig, manifest: str, subsets: dict[float, str], weights: list[str]) -> list[SweepRun]:
    """Every (starting point, fraction) pair in order, each evaluated on the full manifest's test split."""
    from tasks.sweep.analysis import weights_label

    runs = []
    for start in weights:
        for fraction, subset in sorted(subsets.items()):
            run_dir = sweep_dir(cfg) / "runs" / f"{weights_label(start)}-f{round(fraction * 1000):04d}"
            runs.append(SweepRun(
                weights=start, fraction=fraction, name=f"sweep {weights_label(start)} {fraction:g}",
                train=TrainConfig(manifest=subset, run_dir=str(run_dir),
                                  model=cfg.model.model_copy(update={"weights": start}), train=cfg.train,
                                  augment=cfg.augment),
                evaluate=cfg.evaluate.model_copy(update={"run_dir": str(run_dir), "manifest": manifest,
                                                         "output_dir": str(run_dir / "evaluation")})))
    return runs
