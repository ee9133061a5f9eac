"""Steps of the ``tomoflow-sweep`` flow: Prefect tasks over :mod:`tasks.sweep.analysis`, and the runs' plan."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks.core.config import EvaluateConfig, PipelineConfig, TrainConfig
from tasks.core.weights_setting import WeightsSetting
from tasks.infra.caching import content_cache_key_fn
from tasks.infra.retry import retry_policy


#: Training settings of every sweep arm unless the preset's overrides (--set, --epochs) say otherwise:
#: early stopping on the validation loss once a run has taken ``min_steps`` optimiser steps, so a
#: small subset is not starved by a fixed epoch count; ``epochs`` is only a ceiling (a run that
#: reaches it is marked ``capped``).
SWEEP_TRAINING = {"epochs": 60, "patience": 5, "min_steps": 100}


@task(name="write-sweep-subsets", cache_key_fn=content_cache_key_fn(files=("manifest",)), persist_result=True,
      **retry_policy(retries=1, delay_seconds=1))
def write_sweep_subsets(manifest: str, fractions: list[float], seed: int, repeat: int = 0) -> dict[float, str]:
    """The nested, stratified training subsets of one repeat (seed + repeat), each as a manifest beside the full one."""
    import pandas as pd

    from tasks.sweep.analysis import nested_train_subsets, write_subset_manifest

    subsets = nested_train_subsets(pd.read_parquet(manifest), fractions, seed=seed + repeat)
    return {f: str(write_subset_manifest(manifest, patients, f, repeat)) for f, patients in subsets.items()}


def _pooled(runs: list[dict[str, Any]], bootstrap: int, ci: float, seed: int) -> dict[str, Any]:
    """Differences against the reference, each arm against the trivial score, the floor and the verdicts."""
    import pandas as pd

    from tasks.sweep.verdict import pooled_difference, trivial_predictions

    trained = [r for r in runs if r["fraction"] > 0]
    reference = trained[0]["weights"]
    first = trained[0]
    floor = json.loads(Path(first["metrics"]).read_text()).get("trivial") or {}
    image = (floor.get("levels") or {}).get("slice") or {}
    trivial = trivial_predictions(first["predictions"], first["metrics"], first["eval_manifest"])
    preds = {(r["weights"], r["fraction"], r["repeat"]): pd.read_parquet(r["predictions"]) for r in trained}
    starts = list(dict.fromkeys(r["weights"] for r in trained))
    fractions = sorted({r["fraction"] for r in trained})
    differences, versus = [], {}
    for f in fractions:
        for start in starts:
            repeats = sorted(k[2] for k in preds if k[:2] == (start, f))
            pooled = pooled_difference([(trivial, preds[(start, f, r)]) for r in repeats], n=bootstrap, ci=ci, seed=seed)
            versus[(start, f)] = pooled
            if start == reference:
                continue
            both = [r for r in repeats if (reference, f, r) in preds]
            d = pooled_difference([(preds[(reference, f, r)], preds[(start, f, r)]) for r in both], n=bootstrap,
                                  ci=ci, seed=seed)
            differences.append({"fraction": f, "weights": start, "reference": reference,
                                "roc_auc_difference": d["difference"], "low": d["low"], "high": d["high"],
                                "per_repeat": d["per_repeat"], "repeats": d["repeats"], "n_valid": d["n_valid"],
                                "bootstrap": d["bootstrap"]})
    return {"differences": differences, "versus": versus,
            "trivial": {"score": floor.get("score"), "chosen_on": floor.get("chosen_on"),
                        "roc_auc": image.get("roc_auc"), "interval": image.get("roc_auc_interval")}}


def publish_sweep(paths: dict[str, str], out_dir: str) -> None:
    """The ``training-size-sweep`` artifact: the verdicts and table, linked to ``sweep/index.html``.

    The link is an HTTP address when the outputs are served (``tomoflow serve-outputs``,
    TOMOFLOW_OUTPUTS_URL), and then also a link artifact; otherwise the page's path.
    """
    from prefect.artifacts import create_link_artifact

    from tasks.infra.environment import outputs_url

    root = Path(out_dir).parent  # the sweep folder sits in the output root
    url = outputs_url(paths["page"], root)
    page = f"[sweep/index.html]({url})" if url else f"`{paths['page']}`"
    create_markdown_artifact(f"Page: {page}\n\n" + Path(paths["markdown"]).read_text(), key="training-size-sweep",
                             description=f"Image-level AUC against training patients ({Path(out_dir).name})")
    if url:
        create_link_artifact(url, link_text="training-size sweep (index.html)", key="training-size-sweep-page",
                             description="The sweep's page: verdicts, plot, table, learning curves, sources, overlap")


@task(name="summarise-sweep", **retry_policy(retries=1, delay_seconds=1))
def summarise_sweep(runs: list[dict[str, Any]], out_dir: str, bootstrap: int, ci: float, seed: int) -> dict[str, str]:
    """The sweep's table, pooled differences, verdicts and plot, and its ``training-size-sweep`` artifact."""
    from tasks.sweep.analysis import sweep_table
    from tasks.sweep.outputs import write_sweep_outputs
    from tasks.sweep.page import write_sweep_page
    from tasks.sweep.verdict import size_verdicts

    table = sweep_table(runs)
    pooled = _pooled(runs, bootstrap, ci, seed)
    verdicts = size_verdicts(table, pooled["differences"], pooled["versus"])
    versus = [{"weights": w, "fraction": f, "roc_auc_minus_trivial": v["difference"], "low": v["low"],
               "high": v["high"], "repeats": v["repeats"]} for (w, f), v in pooled["versus"].items()]
    paths = write_sweep_outputs(out_dir, table, pooled["differences"], verdicts, trivial=pooled["trivial"],
                                extra={"versus_trivial": versus})
    paths["page"] = str(write_sweep_page(out_dir, table, pooled["differences"], verdicts, pooled["trivial"],
                                         paths["plot"]))
    publish_sweep(paths, out_dir)
    get_run_logger().info("sweep table: %s, plot: %s", paths["table"], paths["plot"])
    for v in verdicts:
        get_run_logger().info("%s", v["sentence"])
    return paths


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
        """What :func:`summarise_sweep` reads of this run, once evaluated."""
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
