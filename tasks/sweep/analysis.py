"""Training-size sweep: how image-level AUC grows with the number of training patients, per starting point.

``tomoflow experiments --train-fractions 0.1,0.25,0.5,1 --weights none,<source> --repeats 3`` trains
every starting point (``none``, ``imagenet``, a state_dict file or an earlier tomoflow run) on
the same nested subsets of the training split and evaluates each model on the same test
split:

* :func:`nested_train_subsets`: patient-level, stratified by the patient's label, nested
  (every patient of a smaller subset is in each larger one), seeded; each repeat draws its
  own subsets (seed + repeat); the validation and test splits are never touched;
* :func:`write_subset_manifest`: the manifest with only the subset's training rows, written
  beside the full manifest (so image paths stay as they are);
* :func:`sweep_table`: one row per trained model (start, size, repeat): the AUC with its
  patient-bootstrap interval beside its floors (``null_roc_auc``, ``trivial_roc_auc``,
  ``beats_trivial``), how long it trained (``best_epoch``, ``optimizer_steps``, ``capped``),
  and for each start that is an earlier model a row at ``fraction`` 0: that model on the
  target's test split before any fine-tuning (zero-shot);
* the pooled differences and the verdicts are :mod:`tasks.sweep.verdict`; the files
  :mod:`tasks.sweep.outputs`.
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

from tasks.core.weights_setting import WeightsSetting

__all__ = [
    "SWEEP_COLUMNS",
    "nested_train_subsets",
    "parse_fractions",
    "parse_weights",
    "start_label",
    "sweep_table",
    "weights_label",
    "write_subset_manifest",
]

#: Columns of ``sweep.csv``.
SWEEP_COLUMNS = ["weights", "start", "fraction", "repeat", "train_patients", "train_images", "test_images", "roc_auc",
                 "roc_auc_low", "roc_auc_high", "accuracy", "null_roc_auc", "trivial_roc_auc", "beats_trivial",
                 "best_epoch", "epochs_run", "optimizer_steps", "capped", "run_dir"]


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


def parse_weights(text: str) -> list[WeightsSetting]:
    """``"none,imagenet,runs/A"`` as a list of starting points (the first is the reference of the differences).

    Raises:
        ValueError: No or repeated starting points, or one :meth:`WeightsSetting.verify` refuses (named).
    """
    values = [p.strip() for p in text.split(",") if p.strip()]
    if not values or len(set(values)) != len(values):
        raise ValueError(f"--weights {text!r}: expected distinct starting points separated by commas, e.g. none,imagenet")
    try:
        return [WeightsSetting.verify(v) for v in values]
    except ValueError as exc:
        raise ValueError(f"--weights {text!r}: {exc}") from None


def start_label(weights: str) -> str:
    """The short name of a starting point, for plots and tables (never a path).

    ``scratch`` (``none``), ``imagenet``, or ``from-<name>`` for an earlier model: its run
    folder's name (the folder above a ``best.pt``/``last.pt`` file), so a pre-trained arm
    never reads like a scratch one.
    """
    setting = WeightsSetting.verify(weights)
    if setting.kind == "none":
        return "scratch"
    if setting.kind == "imagenet":
        return "imagenet"
    path = setting.path
    assert path is not None
    name = path.parent.name if path.suffix in (".pt", ".pth") and path.parent.name else path.stem
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:40] or "weights"
    return f"from-{stem}"


def weights_label(weights: str) -> str:
    """A folder-safe name of a starting point: ``scratch``, ``imagenet``, or ``from-<name>-<hash of its path>``."""
    setting = WeightsSetting.verify(weights)
    label = start_label(setting)
    if setting.path is None:
        return label
    return f"{label}-{hashlib.sha256(str(setting.path.resolve()).encode()).hexdigest()[:8]}"


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


def write_subset_manifest(manifest: str | os.PathLike[str], patients: Sequence[str], fraction: float,
                          repeat: int = 0) -> Path:
    """The manifest with only ``patients`` in its training split, beside it as ``sweep-train-<pct>-r<repeat>.parquet``."""
    from tasks.core.files import atomic_write_parquet

    manifest = Path(manifest)
    frame = pd.read_parquet(manifest)
    train = frame["split"].eq("train").fillna(False).astype(bool)
    keep = ~train | frame["patient_id"].astype(str).isin(set(patients))
    name = f"sweep-train-{round(fraction * 1000):04d}-r{repeat}.parquet"  # 0.25 -> 0250
    return atomic_write_parquet(manifest.parent / name, frame[keep].reset_index(drop=True))


def _train_counts(manifest: str | None) -> tuple[int, int]:
    if manifest is None:
        return 0, 0
    frame = pd.read_parquet(manifest)
    train = frame[frame["split"].eq("train").fillna(False).astype(bool)]
    if "augmented_from" in train.columns:
        train = train[train["augmented_from"].isna()]
    return int(train["patient_id"].nunique()), int(len(train))


def sweep_table(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per evaluated model: starting point, size, repeat, the image-level AUC with its interval and floors.

    Args:
        runs: ``weights``, ``fraction``, ``repeat``, ``manifest`` (the subset's; ``None`` for a
            zero-shot row), ``metrics`` (metrics.json), ``run_dir`` and ``trained`` (the training
            flow's result: ``best_epoch``, ``epochs_run``, ``optimizer_steps``, ``capped``; ``None``
            for a zero-shot row).
    """
    rows = []
    for run in runs:
        patients, images = _train_counts(run.get("manifest"))
        metrics = json.loads(Path(run["metrics"]).read_text())
        level = metrics["levels"]["slice"]
        trivial = ((metrics.get("trivial") or {}).get("levels") or {}).get("slice") or {}
        low, high = (level.get("intervals") or {}).get("roc_auc") or (None, None)
        trained = run.get("trained") or {}
        rows.append({"weights": run["weights"], "start": start_label(run["weights"]), "fraction": run["fraction"],
                     "repeat": int(run.get("repeat", 0)), "train_patients": patients, "train_images": images,
                     "test_images": int(level.get("n", 0)), "roc_auc": level["metrics"].get("roc_auc"),
                     "roc_auc_low": low, "roc_auc_high": high, "accuracy": level["metrics"].get("accuracy"),
                     "null_roc_auc": level.get("null_roc_auc"), "trivial_roc_auc": trivial.get("roc_auc"),
                     "beats_trivial": trivial.get("beats_trivial"), "best_epoch": trained.get("best_epoch"),
                     "epochs_run": trained.get("epochs_run", 0), "optimizer_steps": trained.get("optimizer_steps", 0),
                     "capped": bool(trained.get("capped", False)), "run_dir": run["run_dir"]})
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)
