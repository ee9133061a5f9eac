"""Point metrics of a classifier's predictions: aggregation to volumes and patients, the
confusion-based metrics, ROC AUC and calibration (scikit-learn's functions).

:func:`aggregate` turns a slice prediction table into one row per volume or patient;
:func:`binary_metrics` gives every metric of :data:`METRICS` at a threshold, ``None`` with a
reason where undefined; :func:`calibration` the Brier score and reliability bins.
:mod:`tasks.evaluate.metrics` puts them together with :mod:`tasks.evaluate.metrics_bootstrap`'s intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from tasks.core.schema import COHORT_SEVERITY

__all__ = [
    "COHORT_SEVERITY",
    "HOWS",
    "LEVELS",
    "LEVEL_KEYS",
    "METRICS",
    "aggregate",
    "binary_metrics",
    "calibration",
]

Level = Literal["slice", "volume", "patient"]
How = Literal["max", "mean"]

LEVELS: tuple[str, ...] = ("slice", "volume", "patient")

#: Columns that identify one unit of each level (``slice``: a row of the prediction table).
LEVEL_KEYS: dict[str, list[str]] = {
    "slice": [],
    "volume": ["patient_id", "study_uid", "view"],
    "patient": ["patient_id"],
}

#: Scalar metrics of :func:`binary_metrics`, in report order.
METRICS: tuple[str, ...] = ("accuracy", "sensitivity", "specificity", "roc_auc", "ppv", "npv", "f1", "brier")

#: How slice probabilities become a volume's or patient's.
HOWS: tuple[str, ...] = ("max", "mean")


# --------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------


def _check_level(level: str, how: str) -> None:
    if level not in LEVEL_KEYS:
        raise ValueError(f"level {level!r} is not one of the allowed levels {list(LEVELS)}")
    if how not in HOWS:
        raise ValueError(f"aggregate {how!r} is not one of the allowed methods {list(HOWS)}")


def aggregate(pred: pd.DataFrame, level: Level = "patient", how: How = "max") -> pd.DataFrame:
    """Slice predictions -> one row per slice, volume or patient.

    Args:
        pred: Prediction table (one row per slice) with ``patient_id``, ``label`` (0/1) and
            ``probability``; ``study_uid`` and ``view`` for the volume level; ``cohort`` and
            ``split`` are carried along when present.
        level: ``"slice"`` (the rows as they are), ``"volume"`` (``patient_id`` +
            ``study_uid`` + ``view``) or ``"patient"``.
        how: ``"max"`` or ``"mean"`` of the slice probabilities.

    Returns:
        The key columns, ``label`` (max of the rows': positive if any row is),
        ``probability``, ``n_slices``, and when present ``cohort`` (the most severe, by
        :data:`COHORT_SEVERITY`) and ``split`` (the first); sorted by the keys. The slice
        level returns a copy of ``pred`` with ``n_slices`` = 1, in its order.

    Raises:
        ValueError: Unknown ``level`` or ``how``, missing columns, or null ids.
    """
    _check_level(level, how)
    keys = LEVEL_KEYS[level]
    needed = ["patient_id", "label", "probability", *keys]
    missing = sorted({c for c in needed if c not in pred.columns})
    if missing:
        raise ValueError(f"the prediction table lacks the columns {missing} (has {list(pred.columns)})")
    if level == "slice":
        out = pred.reset_index(drop=True).copy()
        out["n_slices"] = 1
        return out
    null_ids = [k for k in keys if pred[k].isna().any()]
    if null_ids:
        raise ValueError(f"the prediction table has null values in {null_ids}; every row needs its ids")
    frame = pred.reset_index(drop=True)
    grouped = frame.groupby(keys, sort=True, observed=True)
    out = grouped.agg(
        label=("label", "max"),
        probability=("probability", how),
        n_slices=("probability", "size"),
    )
    if "split" in frame.columns:
        out["split"] = grouped["split"].first()
    if "cohort" in frame.columns:
        severity = frame["cohort"].map(COHORT_SEVERITY).astype("float64").fillna(-1.0)
        worst = (
            frame.assign(_severity=severity)
            .sort_values("_severity", ascending=False, kind="stable")
            .drop_duplicates(keys)
            .set_index(keys)["cohort"]
        )
        out["cohort"] = worst.reindex(out.index)
    out = out.reset_index()
    out["label"] = out["label"].astype("int8")
    out["probability"] = out["probability"].astype("float64")
    out["n_slices"] = out["n_slices"].astype("int64")
    return out


# --------------------------------------------------------------------------------------
# Point metrics
# --------------------------------------------------------------------------------------


def _as_arrays(labels: Sequence[Any] | np.ndarray | pd.Series, probabilities: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(pd.Series(labels).astype("float64"), dtype=np.float64)
    p = np.asarray(pd.Series(probabilities).astype("float64"), dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} must be 1-D and of equal length")
    bad = np.unique(y[~np.isin(y, (0.0, 1.0))])
    if bad.size:
        raise ValueError(f"labels must be 0 or 1, found {bad[:5].tolist()}")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(
            "probabilities must be finite and in [0, 1], found "
            f"{p[~np.isfinite(p) | (p < 0) | (p > 1)][:5].tolist()}"
        )
    return y.astype(np.int64), p


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return t


def binary_metrics(
    labels: Sequence[Any] | np.ndarray | pd.Series,
    probabilities: Sequence[float] | np.ndarray | pd.Series,
    threshold: float = 0.5,
    *,
    positives: str = "positive (tumour)",
) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity and friends of thresholded probabilities.

    A case is called positive when its probability is at or above ``threshold``.

    Args:
        labels: True labels, 1 = tumour.
        probabilities: Predicted probabilities of tumour, in [0, 1].
        threshold: Decision threshold.
        positives: How the positive class is named in the reasons for undefined metrics
            (e.g. ``"cancer"`` when the positives are one cohort's).

    Returns:
        A JSON-able dict: ``accuracy``, ``sensitivity`` (recall, true-positive rate),
        ``specificity`` (true-negative rate), ``roc_auc``, ``ppv`` (precision), ``npv``,
        ``f1``, ``brier`` (floats, or ``None`` where undefined); ``confusion``
        (``tn``, ``fp``, ``fn``, ``tp``); ``n``, ``n_positive``, ``n_negative``,
        ``n_predicted_positive``; ``threshold``; ``undefined``: metric -> why it is ``None``.

    Raises:
        ValueError: Labels other than 0/1, probabilities outside [0, 1] or not finite,
            unequal lengths, or a threshold outside [0, 1].
    """
    from sklearn.metrics import brier_score_loss, confusion_matrix  # heavy: on use

    t = _check_threshold(threshold)
    y, p = _as_arrays(labels, probabilities)
    called = (p >= t).astype(np.int64)
    n = int(y.size)
    n_pos = int(y.sum())
    n_neg = n - n_pos
    if n:
        tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, called, labels=[0, 1]).ravel())
    else:
        tn = fp = fn = tp = 0
    undefined: dict[str, str] = {}
    values: dict[str, float | None] = dict.fromkeys(METRICS)
    if n == 0:
        undefined.update(dict.fromkeys(METRICS, "no cases"))
    else:
        values["accuracy"] = (tp + tn) / n
        values["brier"] = float(brier_score_loss(y, p))
        _rates(values, undefined, y, p, called, (tn, fp, fn, tp), t, positives)
    result: dict[str, Any] = {m: (None if values[m] is None else float(values[m])) for m in METRICS}
    result.update(
        confusion={"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        n=n,
        n_positive=n_pos,
        n_negative=n_neg,
        n_predicted_positive=int(tp + fp),
        threshold=t,
        undefined=undefined,
    )
    return result


def _rates(values: dict[str, float | None], undefined: dict[str, str], y: np.ndarray, p: np.ndarray,
           called: np.ndarray, confusion: tuple[int, int, int, int], t: float, positives: str) -> None:
    """Fill ``values`` with the rates that are defined and ``undefined`` with why the others are not."""
    from sklearn.metrics import f1_score, roc_auc_score  # heavy: on use

    tn, fp, fn, tp = confusion
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    no_pos = f"no {positives} cases"
    no_neg = "no negative (normal) cases"
    if n_pos:
        values["sensitivity"] = tp / n_pos
    else:
        undefined["sensitivity"] = f"{no_pos} in this split"
    if n_neg:
        values["specificity"] = tn / n_neg
    else:
        undefined["specificity"] = f"{no_neg} in this split"
    if n_pos and n_neg:
        values["roc_auc"] = float(roc_auc_score(y, p))
    else:
        undefined["roc_auc"] = (
            f"ROC AUC needs both {positives} and negative (normal) cases; "
            f"there are {no_pos if not n_pos else no_neg} in this split"
        )
    if tp + fp:
        values["ppv"] = tp / (tp + fp)
    else:
        undefined["ppv"] = f"no case was called positive at threshold {t:g}"
    if tn + fn:
        values["npv"] = tn / (tn + fn)
    else:
        undefined["npv"] = f"no case was called negative at threshold {t:g}"
    if tp + fp + fn:
        values["f1"] = float(f1_score(y, called, labels=[0, 1], pos_label=1, zero_division=0.0))
    else:
        undefined["f1"] = f"{no_pos} in this split and none called positive (F1 is 0/0)"


# --------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------


def calibration(labels: Any, probabilities: Any, n_bins: int = 10) -> dict[str, Any]:
    """Brier score and reliability-diagram bins (uniform bins of predicted probability).

    Bins follow scikit-learn's :func:`~sklearn.calibration.calibration_curve` (``n_bins``
    equal-width bins on [0, 1]), which gives the mean predicted probability and the
    observed frequency of tumour in each non-empty bin; the counts are added here.

    Returns:
        ``brier`` (``None`` with no case), ``n_bins``, ``strategy`` (``"uniform"``) and
        ``bins``: one dict per non-empty bin with ``lower``, ``upper``, ``count``,
        ``mean_predicted`` and ``observed`` (fraction of tumour cases).

    Raises:
        ValueError: ``n_bins`` below 2, or bad labels or probabilities.
    """
    from sklearn.calibration import calibration_curve  # heavy (scipy): imported on use
    from sklearn.metrics import brier_score_loss

    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 2:
        raise ValueError(f"calibration bins must be an int of at least 2, got {n_bins!r}")
    y, p = _as_arrays(labels, probabilities)
    out: dict[str, Any] = {"brier": None, "n_bins": int(n_bins), "strategy": "uniform", "bins": []}
    if y.size == 0:
        return out
    out["brier"] = float(brier_score_loss(y, p))
    observed, predicted = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # scikit-learn's own bin assignment, to count the cases behind each point.
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    nonempty = np.flatnonzero(counts)
    if len(nonempty) != len(observed):  # pragma: no cover - a change in scikit-learn's binning
        raise RuntimeError("calibration bins do not match scikit-learn's calibration_curve")
    out["bins"] = [
        {
            "lower": round(float(edges[b]), 12),
            "upper": round(float(edges[b + 1]), 12),
            "count": int(counts[b]),
            "mean_predicted": float(mp),
            "observed": float(ob),
        }
        for b, mp, ob in zip(nonempty, predicted, observed)
    ]
    return out

