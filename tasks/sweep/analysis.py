"""Training-size sweep: how image-level AUC grows with the number of training patients, per starting point.

``tomoflow experiments --train-fractions 0.1,0.25,0.5,1 --weights none,<source>`` trains every
starting point (``none``, ``imagenet``, a state_dict file or an earlier tomoflow run) on
the same nested subsets of the training split and evaluates each model on the same test
split:

* :func:`nested_train_subsets`: patient-level, stratified by the patient's label, nested
  (every patient of a smaller subset is in each larger one), seeded; the validation and
  test splits are never touched;
* :func:`write_subset_manifest`: the manifest with only the subset's training rows, written
  beside the full manifest (so image paths stay as they are);
* :func:`sweep_table`, :func:`sweep_differences`: the AUC with its patient-bootstrap
  interval per run, and at each size the paired patient-bootstrap difference of each
  starting point against the first;
* :func:`write_sweep_outputs`: ``sweep.csv``, ``sweep.md``, ``sweep.json`` and
  ``sweep.png`` (AUC against training patients, one line per starting point, chance at 0.5).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "SWEEP_COLUMNS",
    "nested_train_subsets",
    "parse_fractions",
    "parse_weights",
    "sweep_differences",
    "sweep_table",
    "weights_label",
    "write_subset_manifest",
    "write_sweep_outputs",
]

#: Columns of ``sweep.csv``.
SWEEP_COLUMNS = ["weights", "fraction", "train_patients", "train_images", "test_images", "roc_auc", "roc_auc_low",
                 "roc_auc_high", "accuracy", "null_roc_auc", "run_dir"]


def parse_fractions(text: str) -> list[float]:
    """``"0.1,0.25,0.5,1"`` as sorted distinct fractions in (0, 1].

    Raises:
        ValueError: A value that is not a number in (0, 1], naming it.
    """
    values = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = float(part)
        except ValueError:
            value = math.nan
        if not 0 < value <= 1:
            raise ValueError(f"--train-fractions {text!r}: {part!r} is not a fraction in (0, 1], e.g. 0.1,0.25,0.5,1")
        values.append(value)
    return sorted(set(values))


def parse_weights(text: str) -> list[str]:
    """``"none,imagenet,runs/A"`` as a list of starting points (the first is the reference of the differences)."""
    values = [p.strip() for p in text.split(",") if p.strip()]
    if not values or len(set(values)) != len(values):
        raise ValueError(f"--weights {text!r}: expected distinct starting points separated by commas, e.g. none,imagenet")
    return values


def weights_label(weights: str) -> str:
    """A folder-safe name of a starting point: ``none``, ``imagenet``, or ``<folder name>-<hash of its path>``."""
    if weights.strip().lower() in ("none", "imagenet", "scratch"):
        return weights.strip().lower()
    path = Path(weights).expanduser().resolve()
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in path.name)[:40] or "weights"
    return f"{stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def nested_train_subsets(frame: pd.DataFrame, fractions: Sequence[float], *, seed: int = 0) -> dict[float, list[str]]:
    """Training patients for each fraction: nested, stratified by label, patient-level, seeded.

    Each label's training patients are put in one seeded order; a fraction takes the first
    ``ceil(f * n)`` of each label (at least one), so smaller subsets are prefixes of larger
    ones and each keeps both classes.

    Raises:
        ValueError: The training split lacks a class.
    """
    rows = frame[frame["split"].eq("train").fillna(False).astype(bool)]
    if "augmented_from" in rows.columns:
        rows = rows[rows["augmented_from"].isna()]
    labels = rows.groupby("patient_id")["label"].max()
    if labels.nunique() < 2:
        raise ValueError("the training split holds one class only; a training-size sweep needs both")
    rng = np.random.default_rng(seed)
    orders = {label: list(rng.permutation(sorted(ids.index.astype(str))))
              for label, ids in sorted(labels.groupby(labels), key=lambda kv: kv[0])}
    return {f: sorted(p for order in orders.values() for p in order[:max(1, math.ceil(f * len(order)))])
            for f in fractions}


def write_subset_manifest(manifest: str | os.PathLike[str], patients: Sequence[str], fraction: float) -> Path:
    """The manifest with only ``patients`` in its training split, beside it as ``sweep-train-<pct>.parquet``."""
    from tasks.core.files import atomic_write_parquet

    manifest = Path(manifest)
    frame = pd.read_parquet(manifest)
    train = frame["split"].eq("train").fillna(False).astype(bool)
    keep = ~train | frame["patient_id"].astype(str).isin(set(patients))
    name = f"sweep-train-{round(fraction * 1000):04d}.parquet"  # 0.25 -> 0250
    return atomic_write_parquet(manifest.parent / name, frame[keep].reset_index(drop=True))


def sweep_table(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per trained model: starting point, size, and the image-level AUC with its interval.

    Args:
        runs: ``weights``, ``fraction``, ``manifest`` (the subset's), ``metrics`` (metrics.json),
            ``run_dir``.
    """
    rows = []
    for run in runs:
        frame = pd.read_parquet(run["manifest"])
        train = frame[frame["split"].eq("train").fillna(False).astype(bool)]
        if "augmented_from" in train.columns:
            train = train[train["augmented_from"].isna()]
        level = json.loads(Path(run["metrics"]).read_text())["levels"]["slice"]
        low, high = (level.get("intervals") or {}).get("roc_auc") or (None, None)
        rows.append({"weights": run["weights"], "fraction": run["fraction"],
                     "train_patients": int(train["patient_id"].nunique()), "train_images": int(len(train)),
                     "test_images": int(level.get("n", 0)), "roc_auc": level["metrics"].get("roc_auc"),
                     "roc_auc_low": low, "roc_auc_high": high, "accuracy": level["metrics"].get("accuracy"),
                     "null_roc_auc": level.get("null_roc_auc"), "run_dir": run["run_dir"]})
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


def sweep_differences(runs: Sequence[Mapping[str, Any]], *, n: int, ci: float, seed: int) -> list[dict[str, Any]]:
    """At each size, each starting point minus the first (paired patient bootstrap on the same test images)."""
    from tasks.evaluate.paired_bootstrap import paired_difference

    reference = runs[0]["weights"]
    by_key = {(r["weights"], r["fraction"]): r for r in runs}
    out = []
    for run in runs:
        if run["weights"] == reference:
            continue
        base = by_key[(reference, run["fraction"])]
        diff = paired_difference(pd.read_parquet(base["predictions"]), pd.read_parquet(run["predictions"]),
                                 n=n, ci=ci, seed=seed)
        auc = diff["difference"]["roc_auc"]
        low, high = diff["intervals"]["roc_auc"] or (None, None)
        out.append({"fraction": run["fraction"], "weights": run["weights"], "reference": reference,
                    "roc_auc_difference": auc, "low": low, "high": high, "n_valid": diff["n_valid"]["roc_auc"]})
    return out


def _plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for weights, rows in table.groupby("weights", sort=False):
        rows = rows.sort_values("train_patients")
        auc = rows["roc_auc"].astype(float)
        low = (auc - rows["roc_auc_low"].astype(float)).fillna(0).clip(lower=0)
        high = (rows["roc_auc_high"].astype(float) - auc).fillna(0).clip(lower=0)
        ax.errorbar(rows["train_patients"], auc, yerr=[low, high], marker="o", capsize=3, label=str(weights))
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance (AUC 0.5)")
    ax.set_xlabel("training patients")
    ax.set_ylabel("test ROC AUC per image (95% interval)")
    ax.set_ylim(0, 1.02)
    ax.legend(title="starting point", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def _markdown(table: pd.DataFrame, differences: Sequence[Mapping[str, Any]]) -> str:
    def f(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    lines = ["# Training-size sweep (test split, per image)", "",
             "| starting point | fraction | training patients | training images | ROC AUC | interval | null AUC |",
             "|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        lines.append(f"| {r['weights']} | {r['fraction']:g} | {r['train_patients']} | {r['train_images']} | "
                     f"{f(r['roc_auc'])} | [{f(r['roc_auc_low'])}, {f(r['roc_auc_high'])}] | {f(r['null_roc_auc'])} |")
    if differences:
        lines += ["", "Paired patient-bootstrap difference in ROC AUC against the first starting point "
                  "(same test images; an interval holding 0 shows no difference):", "",
                  "| fraction | starting point | minus | difference | interval |", "|---|---|---|---|---|"]
        for d in differences:
            lines.append(f"| {d['fraction']:g} | {d['weights']} | {d['reference']} | {f(d['roc_auc_difference'])} | "
                         f"[{f(d['low'])}, {f(d['high'])}] |")
    return "\n".join(lines) + "\n"


def write_sweep_outputs(out_dir: str | os.PathLike[str], table: pd.DataFrame,
                        differences: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Write ``sweep.csv``, ``sweep.md``, ``sweep.json`` and ``sweep.png`` into ``out_dir``; return their paths."""
    from tasks.core.files import atomic_write, atomic_write_json, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / "sweep.csv", "markdown": out / "sweep.md", "json": out / "sweep.json",
             "plot": out / "sweep.png"}
    atomic_write_text(paths["table"], table.to_csv(index=False))
    atomic_write_text(paths["markdown"], _markdown(table, differences))
    atomic_write_json(paths["json"], {"runs": json.loads(table.to_json(orient="records")),
                                      "differences": list(differences)})
    atomic_write(paths["plot"], lambda tmp: _plot(table, Path(tmp)))
    return {k: str(v) for k, v in paths.items()}
