"""Metrics of a classifier's predictions: per slice, per volume and per patient, with intervals.

The study judges a model by accuracy, sensitivity and specificity; this module adds what a
reader needs to weigh them: ROC AUC, predictive values, F1, the Brier score and a
reliability diagram, the number of cases behind each figure, and bootstrap confidence
intervals. Point metrics come from scikit-learn.

Levels. A prediction table (:func:`models.predict.predict`) has one row per slice.
:func:`aggregate` turns it into one row per *volume* (``patient_id`` + ``study_uid`` +
``view``) or per *patient*: a unit is positive when any of its slices is, and its
probability is the max (a tumour anywhere in the breast makes the breast positive) or the
mean of its slices'.

Undefined metrics. A metric that cannot be computed (sensitivity without a single positive
case, PPV when no case was called positive, ROC AUC with one class) is ``None``, and the
``undefined`` dict next to it says why. No metric is ever a silent 0 or NaN.

Null baseline. Aggregating to volumes and patients can reward image counts: with max
aggregation a patient with three images beats a patient with one three times in four on
*random* scores. :func:`null_roc_auc` measures that floor: the model's slice scores are
shuffled across the slices (a random scorer with the model's score distribution), aggregated
exactly as the model's, and scored; the mean and 95% range of 200 seeded draws sit beside
every level's AUC, and ``better_than_null`` says whether the model's interval clears it.

Degenerate models. :func:`degeneracy` flags a model whose test probabilities barely vary
(a collapsed network's AUC comes from float noise) or all fall on one side of the
threshold; ``metrics.json`` carries ``degenerate`` and ``degenerate_reason``.

Intervals. Slices, volumes and views of one patient are not independent, so
:func:`bootstrap_intervals` resamples **patients** with replacement (all of a patient's
rows go together), recomputes every metric at the level, and reports percentile intervals
over the resamples in which the metric is defined, with the count of those. A resample is
computed exactly as if the drawn patients' rows were duplicated (integer weights, the
same arithmetic as scikit-learn's), from per-patient sums and vectorised over resamples:
a thousand resamples of 100,000 slices of 2,000 patients take seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = [
    "COHORT_SEVERITY",
    "LEVELS",
    "LEVEL_KEYS",
    "METRICS",
    "POSITIVE_COHORTS",
    "SCHEMA",
    "aggregate",
    "binary_metrics",
    "bootstrap_intervals",
    "calibration",
    "chance_losses",
    "constant_predictor_loss",
    "degeneracy",
    "evaluate_predictions",
    "floor_scorers",
    "null_roc_auc",
]

Level = Literal["slice", "volume", "patient"]
How = Literal["max", "mean"]

#: Version tag of the dict :func:`evaluate_predictions` returns (``metrics.json``).
SCHEMA = "tomoflow-metrics/1"

LEVELS: tuple[str, ...] = ("slice", "volume", "patient")

#: Columns that identify one unit of each level (``slice``: a row of the prediction table).
LEVEL_KEYS: dict[str, list[str]] = {
    "slice": [],
    "volume": ["patient_id", "study_uid", "view"],
    "patient": ["patient_id"],
}

#: Scalar metrics of :func:`binary_metrics`, in report order.
METRICS: tuple[str, ...] = ("accuracy", "sensitivity", "specificity", "roc_auc", "ppv", "npv", "f1", "brier")

#: Cohorts reported separately (each one's positives against all negatives).
POSITIVE_COHORTS: tuple[str, ...] = ("benign", "cancer")

#: Which cohort a volume or patient takes when its slices differ: the most severe.
COHORT_SEVERITY: dict[str, int] = {"normal": 0, "actionable": 1, "benign": 2, "cancer": 3}

_HOWS = ("max", "mean")

#: Draws of the permutation null of every level's ROC AUC.
NULL_DRAWS = 200

#: Test probabilities whose standard deviation is below this are "negligible spread":
#: a collapsed model (VGG16 from scratch at a high learning rate outputs 0.494899 +- 6e-7).
DEGENERATE_SPREAD = 1e-3


# --------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------


def _check_level(level: str, how: str) -> None:
    if level not in LEVEL_KEYS:
        raise ValueError(f"level {level!r} is not one of the allowed levels {list(LEVELS)}")
    if how not in _HOWS:
        raise ValueError(f"aggregate {how!r} is not one of the allowed methods {list(_HOWS)}")


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
    from sklearn.metrics import brier_score_loss, confusion_matrix, f1_score, roc_auc_score  # heavy: on use

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


# --------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


class _PatientStatistics:
    """Every bootstrapped statistic of one level's table, as a function of patient counts.

    A resample is a vector of counts, one per patient (how often it was drawn). Each
    statistic equals :func:`binary_metrics` on the table with each patient's rows repeated
    that many times, computed from per-patient sums instead of the repeated rows:

    * the confusion counts and the Brier score are linear in the counts;
    * ROC AUC is the Mann-Whitney statistic with ties counted one half (what
      scikit-learn's trapezoidal AUC equals): for each distinct probability ``g``, the
      drawn weight of positives at ``g`` times the weight of negatives below ``g`` plus
      half of those at ``g``. Sparse patient x value incidence matrices turn the counts
      into those weights.

    Keys: :data:`METRICS`, and ``sensitivity_<cohort>`` and ``roc_auc_<cohort>`` (that
    cohort's positives against all negatives) for :data:`POSITIVE_COHORTS` when the table
    has a ``cohort`` column. Undefined values are NaN here; they never leave this module.
    """

    def __init__(self, table: pd.DataFrame, threshold: float) -> None:
        from scipy import sparse  # heavy: imported on use

        self.patients, codes = np.unique(table["patient_id"].astype(str).to_numpy(), return_inverse=True)
        n_patients = len(self.patients)
        y = table["label"].to_numpy(dtype=np.int64)
        p = table["probability"].to_numpy(dtype=np.float64)
        called = p >= threshold
        positive = y == 1
        negative = ~positive

        def per_patient(values: np.ndarray) -> np.ndarray:
            return np.bincount(codes, weights=values.astype(np.float64), minlength=n_patients)

        self.tn = per_patient(negative & ~called)
        self.fp = per_patient(negative & called)
        self.squared = per_patient((p - y) ** 2)
        values, group = np.unique(p, return_inverse=True)
        # (value group x patient): negatives of each patient at each distinct probability.
        self.negatives_at = sparse.csr_matrix(
            (np.ones(int(negative.sum())), (group[negative], codes[negative])), shape=(len(values), n_patients)
        )
        sets = {"": positive}
        if "cohort" in table.columns:
            cohort = table["cohort"].astype("string").fillna("").to_numpy(dtype=object)
            sets.update({f"_{name}": positive & (cohort == name) for name in POSITIVE_COHORTS})
        self.sets = []
        for suffix, rows in sets.items():
            used, column = np.unique(group[rows], return_inverse=True)
            positives_at = sparse.csr_matrix(
                (np.ones(int(rows.sum())), (column, codes[rows])), shape=(len(used), n_patients)
            )
            self.sets.append((suffix, per_patient(rows & called), per_patient(rows & ~called), used, positives_at))

    def __call__(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """Statistics of each resample; ``counts`` is ``(resamples, patients)``."""
        tn, fp = counts @ self.tn, counts @ self.fp
        negatives = (self.negatives_at @ counts.T).T  # (resamples, value groups)
        below = np.cumsum(negatives, axis=1) - 0.5 * negatives
        n_negative = tn + fp
        out: dict[str, np.ndarray] = {}
        for suffix, tp_p, fn_p, used, positives_at in self.sets:
            tp, fn = counts @ tp_p, counts @ fn_p
            pairs = ((positives_at @ counts.T).T * below[:, used]).sum(axis=1)
            out[f"sensitivity{suffix}"] = _ratio(tp, tp + fn)
            out[f"roc_auc{suffix}"] = _ratio(pairs, (tp + fn) * n_negative)
            if suffix == "":
                total = tp + fn + tn + fp
                out.update(
                    accuracy=_ratio(tp + tn, total),
                    specificity=_ratio(tn, n_negative),
                    ppv=_ratio(tp, tp + fp),
                    npv=_ratio(tn, tn + fn),
                    f1=_ratio(2 * tp, 2 * tp + fp + fn),
                    brier=_ratio(counts @ self.squared, total),
                )
        return {**{m: out[m] for m in METRICS}, **{k: v for k, v in out.items() if k not in METRICS}}


def _draw_patients(rng: np.random.Generator, n_patients: int) -> np.ndarray:
    """One bootstrap resample: ``n_patients`` patient indices drawn with replacement."""
    return rng.integers(0, n_patients, size=n_patients)


def _resample_statistics(statistics: _PatientStatistics, *, n: int, seed: int) -> dict[str, np.ndarray]:
    """``statistics`` of ``n`` patient resamples; returns arrays of length ``n``."""
    n_patients = len(statistics.patients)
    rng = np.random.default_rng(seed)
    # Each resample's draw is made on its own, in order, so the results don't depend on
    # how resamples are blocked for memory.
    block = max(1, min(n, 4_000_000 // max(1, statistics.negatives_at.shape[0], n_patients)))
    collected: dict[str, list[np.ndarray]] = {}
    done = 0
    while done < n:
        size = min(block, n - done)
        counts = np.zeros((size, n_patients), dtype=np.float64)
        for r in range(size):
            counts[r] = np.bincount(_draw_patients(rng, n_patients), minlength=n_patients)
        for key, values in statistics(counts).items():
            collected.setdefault(key, []).append(values)
        done += size
    return {k: np.concatenate(v) for k, v in collected.items()}


def _percentile_intervals(samples: Mapping[str, np.ndarray], ci: float) -> tuple[dict[str, list[float] | None], dict[str, int]]:
    alpha = (1.0 - ci) / 2.0
    intervals: dict[str, list[float] | None] = {}
    valid: dict[str, int] = {}
    for key, values in samples.items():
        finite = values[np.isfinite(values)]
        valid[key] = int(finite.size)
        if finite.size:
            low, high = np.quantile(finite, [alpha, 1.0 - alpha])
            intervals[key] = [float(low), float(high)]
        else:
            intervals[key] = None
    return intervals, valid


def _check_bootstrap(n: int, ci: float) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"bootstrap resamples must be a non-negative int, got {n!r}")
    if not 0.0 < float(ci) < 1.0:
        raise ValueError(f"ci must be in (0, 1), e.g. 0.95, got {ci!r}")


def _bootstrap_table(table: pd.DataFrame, *, level: str, how: str, threshold: float, n: int, ci: float, seed: int) -> dict[str, Any]:
    statistics = _PatientStatistics(table, threshold)
    result: dict[str, Any] = {
        "level": level,
        "aggregate": how,
        "threshold": threshold,
        "unit": "patient",
        "method": "percentile",
        "n_resamples": int(n),
        "ci": float(ci),
        "seed": int(seed),
        "n_patients": int(table["patient_id"].nunique()),
    }
    if n == 0 or table.empty:
        keys = statistics(np.zeros((1, len(statistics.patients)))).keys()
        result["intervals"] = dict.fromkeys(keys)
        result["n_valid"] = dict.fromkeys(keys, 0)
        return result
    samples = _resample_statistics(statistics, n=n, seed=seed)
    result["intervals"], result["n_valid"] = _percentile_intervals(samples, ci)
    return result


def bootstrap_intervals(
    pred: pd.DataFrame,
    level: Level = "patient",
    how: How = "max",
    threshold: float = 0.5,
    n: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap intervals of every metric, resampling patients.

    Each resample draws as many patients as there are, with replacement, from a
    ``numpy.random.Generator`` seeded with ``seed``; a drawn patient brings all its rows
    (a patient drawn twice counts twice). The slices are then aggregated to ``level``
    (aggregation happens within a patient, so aggregating once and resampling the
    aggregated rows is the same thing) and the metrics recomputed. Resamples in which a
    metric is undefined (no positive patient drawn, say) are left out of its interval,
    and ``n_valid`` says how many were left.

    Args:
        pred: Slice prediction table (see :func:`aggregate`).
        level: ``"slice"``, ``"volume"`` or ``"patient"``.
        how: ``"max"`` or ``"mean"`` aggregation of slice probabilities.
        threshold: Decision threshold.
        n: Number of resamples (0: no intervals).
        ci: Confidence level, e.g. 0.95 for the 2.5th and 97.5th percentiles.
        seed: Seed of the resampling.

    Returns:
        ``intervals`` (metric -> ``[low, high]``, or ``None`` with no valid resample),
        ``n_valid`` (metric -> resamples in which it was defined), and ``level``,
        ``aggregate``, ``threshold``, ``unit`` (``"patient"``), ``method``
        (``"percentile"``), ``n_resamples``, ``ci``, ``seed``, ``n_patients``. Metrics are
        :data:`METRICS` plus ``sensitivity_<cohort>`` and ``roc_auc_<cohort>`` for each of
        :data:`POSITIVE_COHORTS` when ``pred`` has a ``cohort`` column.

    Raises:
        ValueError: Bad level, method, threshold, ``n`` or ``ci``, or bad labels or
            probabilities.
    """
    _check_level(level, how)
    _check_bootstrap(n, ci)
    t = _check_threshold(threshold)
    _as_arrays(pred["label"], pred["probability"])
    table = aggregate(pred, level, how)
    return _bootstrap_table(table, level=level, how=how, threshold=t, n=int(n), ci=ci, seed=seed)


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


# --------------------------------------------------------------------------------------
# Null baseline and degenerate models
# --------------------------------------------------------------------------------------


def _unit_codes(pred: pd.DataFrame, level: str) -> tuple[np.ndarray, int]:
    """Each slice's unit (0..n_units-1, in :func:`aggregate`'s sorted order) and the unit count."""
    keys = LEVEL_KEYS[level]
    if not keys:
        return np.arange(len(pred)), len(pred)
    codes = pred.groupby(keys, sort=True, observed=True).ngroup().to_numpy()
    return codes, int(codes.max()) + 1 if len(codes) else 0


def _auc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mann-Whitney ROC AUC (ties count one half) of each row of ``scores`` against ``labels``."""
    from scipy.stats import rankdata

    positive = labels == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    ranks = rankdata(scores, axis=1)
    return (ranks[:, positive].sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def null_roc_auc(
    pred: pd.DataFrame,
    level: Level = "patient",
    how: How = "max",
    *,
    draws: int = NULL_DRAWS,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """The ROC AUC a random scorer gets at ``level``, aggregated exactly as the model's.

    Each draw permutes the slice probabilities across the slices (so the random scorer has
    the model's score distribution, ties included), aggregates them to ``level`` with
    ``how`` as :func:`aggregate` does, and computes the ROC AUC against the units' labels.
    With max aggregation this rewards units with more slices: a positive patient with
    ``k`` images and normals with one get ``k / (k + 1)`` on random scores.

    Args:
        pred: Slice prediction table (see :func:`aggregate`).
        level: ``"slice"``, ``"volume"`` or ``"patient"``.
        how: ``"max"`` or ``"mean"``.
        draws: Number of permutations.
        seed: Seed of the permutations.
        ci: Width of the reported range (0.95: the 2.5th to the 97.5th percentile).

    Returns:
        ``null_roc_auc`` (mean over draws, ``None`` when the AUC is undefined at the
        level, with ``reason``), ``null_roc_auc_range`` (``[low, high]`` or ``None``),
        ``draws``, ``seed``, ``method`` (``"permutation"``).

    Raises:
        ValueError: Bad level, method, ``draws`` or ``ci``.
    """
    _check_level(level, how)
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
        raise ValueError(f"null draws must be a positive int, got {draws!r}")
    if not 0.0 < float(ci) < 1.0:
        raise ValueError(f"ci must be in (0, 1), e.g. 0.95, got {ci!r}")
    out: dict[str, Any] = {"null_roc_auc": None, "null_roc_auc_range": None, "draws": int(draws),
                           "seed": int(seed), "method": "permutation"}
    frame = pred.reset_index(drop=True)
    codes, n_units = _unit_codes(frame, level)
    labels = np.zeros(n_units, dtype=np.int64)
    np.maximum.at(labels, codes, frame["label"].to_numpy(dtype=np.int64))
    if labels.min(initial=1) == labels.max(initial=0):
        out["reason"] = f"the {level} level has only one class, so ROC AUC is undefined"
        return out
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    sizes = np.diff(np.r_[starts, len(codes)])
    probabilities = frame["probability"].to_numpy(dtype=np.float64)
    rng = np.random.default_rng(seed)
    block = max(1, min(int(draws), 2_000_000 // max(1, len(probabilities))))
    aucs: list[np.ndarray] = []
    done = 0
    while done < draws:
        size = min(block, int(draws) - done)
        # Each draw is its own permutation, in order, so the result doesn't depend on blocking.
        shuffled = np.stack([probabilities[rng.permutation(len(probabilities))] for _ in range(size)])[:, order]
        if how == "max":
            units = np.maximum.reduceat(shuffled, starts, axis=1)
        else:
            units = np.add.reduceat(shuffled, starts, axis=1) / sizes
        aucs.append(_auc_rows(labels, units))
        done += size
    values = np.concatenate(aucs)
    alpha = (1.0 - float(ci)) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    out["null_roc_auc"] = float(values.mean())
    out["null_roc_auc_range"] = [float(low), float(high)]
    return out


def degeneracy(
    probabilities: Sequence[float] | np.ndarray | pd.Series,
    threshold: float = 0.5,
    *,
    spread: float = DEGENERATE_SPREAD,
) -> tuple[bool, str | None]:
    """Whether a model's test probabilities are degenerate, and why.

    Degenerate: the standard deviation of the probabilities is below ``spread`` (the
    model gives every image about the same score, so its ranking, and its AUC, come from
    noise), or every image falls on one side of ``threshold`` (all called tumour, or all
    called normal).

    Returns:
        ``(degenerate, reason)``; ``reason`` is ``None`` when not degenerate.
    """
    p = np.asarray(pd.Series(probabilities).astype("float64"), dtype=np.float64)
    t = _check_threshold(threshold)
    if p.size == 0:
        return False, None
    reasons = []
    std = float(p.std())
    if std < spread:
        reasons.append(
            f"the test probabilities hardly vary (standard deviation {std:.2g}, from {p.min():.6f} to "
            f"{p.max():.6f}, below {spread:g}): the model gives every image the same score, so its ROC AUC "
            "comes from numerical noise"
        )
    called = int((p >= t).sum())
    if called == 0:
        reasons.append(f"every one of the {p.size} test images is called normal (probability below {t:g})")
    elif called == p.size:
        reasons.append(f"every one of the {p.size} test images is called tumour (probability at or above {t:g})")
    return bool(reasons), ("; ".join(reasons) if reasons else None)


def constant_predictor_loss(n_positive: int, n_negative: int, pos_weight: float | None = None) -> float | None:
    """The mean binary cross-entropy of the best constant predictor: the loss of chance.

    Matches ``binary_cross_entropy_with_logits(..., pos_weight=w)`` with mean reduction:
    a positive's loss is weighted by ``w``, and the sum is divided by the number of cases.
    The best constant probability is ``w * n_pos / (w * n_pos + n_neg)``.

    Returns:
        The loss, or ``None`` without cases.
    """
    n = int(n_positive) + int(n_negative)
    if n == 0:
        return None
    a = (1.0 if pos_weight is None else float(pos_weight)) * int(n_positive)
    b = float(int(n_negative))
    if a == 0.0 or b == 0.0:
        return 0.0
    p = a / (a + b)
    return float((-a * np.log(p) - b * np.log1p(-p)) / n)


def chance_losses(
    manifest: pd.DataFrame, class_balance: str = "weights", *, aux_weight: float = 0.0
) -> dict[str, Any]:
    """The loss of a constant predictor on the training and validation splits, as training measures it.

    The class weights are the ones training used (:func:`models.train.make_loaders`):
    ``"weights"`` weights positives by ``n_neg / n_pos`` of the training split (training
    and validation losses alike); ``"sampler"`` draws both classes equally in training (an
    unweighted loss on a balanced stream) and leaves validation unweighted; ``"none"``
    weights nothing.

    Args:
        manifest: The manifest training read (``split``, ``label``).
        class_balance: ``TrainParams.class_balance``.
        aux_weight: Weight of Inception's auxiliary loss, which the training loss adds
            (a constant auxiliary output costs the same again, times this weight).

    Returns:
        ``train`` and ``validation`` (float or ``None`` without cases), ``pos_weight``,
        ``class_balance``.
    """
    split = manifest["split"].astype("string")
    label = manifest["label"].astype("int64")
    counts = {}
    for name in ("train", "validation"):
        rows = split.eq(name).fillna(False).astype(bool)
        counts[name] = (int(label[rows].sum()), int((label[rows] == 0).sum()))
    n_pos, n_neg = counts["train"]
    pos_weight = n_neg / n_pos if class_balance == "weights" and n_pos else None
    if class_balance == "sampler":
        train = constant_predictor_loss(1, 1) if n_pos and n_neg else constant_predictor_loss(n_pos, n_neg)
    else:
        train = constant_predictor_loss(n_pos, n_neg, pos_weight)
    if train is not None:
        train *= 1.0 + float(aux_weight)
    return {
        "train": train,
        "validation": constant_predictor_loss(*counts["validation"], pos_weight),
        "pos_weight": pos_weight,
        "class_balance": class_balance,
    }


def _null_verdict(entry: dict[str, Any], null: Mapping[str, Any]) -> None:
    """``better_than_null`` and ``null_warning`` of one level's entry."""
    auc = entry["metrics"].get("roc_auc")
    high = (null.get("null_roc_auc_range") or [None, None])[1]
    if auc is None or high is None:
        entry["better_than_null"] = None
        entry["null_warning"] = None
        return
    interval = entry["intervals"].get("roc_auc")
    low = interval[0] if interval else auc
    entry["better_than_null"] = bool(low > high)
    if entry["better_than_null"]:
        entry["null_warning"] = None
    else:
        what = "its interval's lower end" if interval else "the AUC (no interval)"
        entry["null_warning"] = (
            f"ROC AUC {auc:.3f}: {what} ({low:.3f}) does not clear the {high:.3f} that random scores "
            f"aggregated the same way reach (null {null['null_roc_auc']:.3f}, 95% range "
            f"{null['null_roc_auc_range'][0]:.3f}-{high:.3f}): not better than chance at this level"
        )


# --------------------------------------------------------------------------------------
# Everything
# --------------------------------------------------------------------------------------


def _cohort_metrics(table: pd.DataFrame, threshold: float) -> dict[str, dict[str, Any]]:
    if "cohort" not in table.columns:
        return {}
    out: dict[str, dict[str, Any]] = {}
    cohort = table["cohort"].astype("string")
    for name in POSITIVE_COHORTS:
        keep = table["label"].eq(0) | (table["label"].eq(1) & cohort.eq(name).fillna(False))
        sub = table.loc[keep.astype(bool)]
        m = binary_metrics(sub["label"], sub["probability"], threshold, positives=f"{name} (positive)")
        out[name] = {
            "sensitivity": m["sensitivity"],
            "roc_auc": m["roc_auc"],
            "n_positive": m["n_positive"],
            "n_negative": m["n_negative"],
            "true_positives": m["confusion"]["tp"],
            "undefined": {k: v for k, v in m["undefined"].items() if k in ("sensitivity", "roc_auc")},
        }
    return out


def evaluate_predictions(
    pred: pd.DataFrame,
    *,
    how: How = "max",
    threshold: float = 0.5,
    bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    calibration_bins: int = 10,
    null_draws: int = NULL_DRAWS,
) -> dict[str, Any]:
    """All metrics of a prediction table, per slice, volume and patient (``metrics.json``).

    Args:
        pred: Slice prediction table from :func:`models.predict.predict`.
        how: ``"max"`` or ``"mean"``: how slice probabilities become volume and patient ones.
        threshold: Decision threshold (at or above: tumour), the same at every level.
        bootstrap: Patient resamples for the intervals (0: no intervals).
        ci: Confidence level of the intervals.
        seed: Seed of the bootstrap (every level uses the same patient draws).
        calibration_bins: Bins of the reliability diagram.
        null_draws: Permutations of the null ROC AUC (:func:`null_roc_auc`), seeded with ``seed``.

    Returns:
        A JSON-able dict (no NaN anywhere):

        * ``schema``, ``splits`` (splits present in ``pred``), ``threshold``, ``aggregate``,
          ``ci``, ``bootstrap`` (``n_resamples``, ``seed``, ``unit``, ``method``),
          ``n`` (level -> number of units);
        * ``levels``: level -> ``n``, ``n_positive``, ``n_negative``, ``n_patients``,
          ``n_predicted_positive``, ``metrics`` (:data:`METRICS` -> value or ``None``),
          ``confusion``, ``undefined`` (metric -> reason), ``intervals``
          (metric -> ``[low, high]`` or ``None``), ``n_valid`` (metric -> valid
          resamples), ``by_cohort`` (cohort -> ``sensitivity``, ``roc_auc``,
          ``n_positive``, ``n_negative``, ``true_positives``, ``undefined``,
          ``intervals``, ``n_valid``) and ``calibration`` (see :func:`calibration`);
          ``null_roc_auc`` (the mean ROC AUC of random scores aggregated the same way,
          :func:`null_roc_auc`), ``null_roc_auc_range`` (its 95% range),
          ``better_than_null`` (whether the AUC's interval, or the AUC without one, lies
          above that range; ``None`` when undefined) and ``null_warning`` (text, or ``None``);
        * ``null``: ``draws``, ``seed``, ``method``;
        * ``degenerate`` (bool) and ``degenerate_reason`` (text or ``None``): see
          :func:`degeneracy`.

    Raises:
        ValueError: Bad arguments, labels or probabilities, or an empty table.
    """
    if how not in _HOWS:
        raise ValueError(f"aggregate {how!r} is not one of the allowed methods {list(_HOWS)}")
    t = _check_threshold(threshold)
    _check_bootstrap(bootstrap, ci)
    if pred.empty:
        raise ValueError("the prediction table is empty: nothing to evaluate")
    _as_arrays(pred["label"], pred["probability"])
    splits = sorted(str(s) for s in pred["split"].dropna().unique()) if "split" in pred.columns else []
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "splits": splits,
        "threshold": t,
        "aggregate": how,
        "ci": float(ci),
        "bootstrap": {"n_resamples": int(bootstrap), "seed": int(seed), "unit": "patient", "method": "percentile"},
        "n": {},
        "levels": {},
        "null": {"draws": int(null_draws), "seed": int(seed), "method": "permutation"},
    }
    result["degenerate"], result["degenerate_reason"] = degeneracy(pred["probability"], t)
    for level in LEVELS:
        table = aggregate(pred, level, how)
        point = binary_metrics(table["label"], table["probability"], t)
        boot = _bootstrap_table(table, level=level, how=how, threshold=t, n=int(bootstrap), ci=ci, seed=seed)
        by_cohort = _cohort_metrics(table, t)
        for name, entry in by_cohort.items():
            entry["intervals"] = {m: boot["intervals"].get(f"{m}_{name}") for m in ("sensitivity", "roc_auc")}
            entry["n_valid"] = {m: boot["n_valid"].get(f"{m}_{name}", 0) for m in ("sensitivity", "roc_auc")}
        result["n"][level] = point["n"]
        result["levels"][level] = {
            "n": point["n"],
            "n_positive": point["n_positive"],
            "n_negative": point["n_negative"],
            "n_predicted_positive": point["n_predicted_positive"],
            "n_patients": int(table["patient_id"].nunique()),
            "metrics": {m: point[m] for m in METRICS},
            "confusion": point["confusion"],
            "undefined": point["undefined"],
            "intervals": {m: boot["intervals"][m] for m in METRICS},
            "n_valid": {m: boot["n_valid"][m] for m in METRICS},
            "by_cohort": by_cohort,
            "calibration": calibration(table["label"], table["probability"], calibration_bins),
        }
        null = null_roc_auc(pred, level, how, draws=null_draws, seed=seed)
        entry = result["levels"][level]
        entry["null_roc_auc"] = null["null_roc_auc"]
        entry["null_roc_auc_range"] = null["null_roc_auc_range"]
        _null_verdict(entry, null)
    return result


def floor_scorers(
    pred: pd.DataFrame,
    *,
    how: How = "max",
    threshold: float = 0.5,
    bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    null_draws: int = NULL_DRAWS,
) -> dict[str, dict[str, Any]]:
    """Metrics of two scorers that know nothing, on a model's test images: the floor of a comparison.

    ``constant`` gives every image P(tumour) = ``threshold`` (so every image is called
    tumour, and every ranking is a tie); ``random`` gives each image a seeded uniform
    random probability. Both are evaluated exactly as the model was
    (:func:`evaluate_predictions` with the same aggregation, threshold and bootstrap), so
    their patient-level figures show what image counts alone are worth.

    Args:
        pred: A model's slice prediction table (its labels and ids are used, not its scores).
        how, threshold, bootstrap, ci, seed, null_draws: As for :func:`evaluate_predictions`.

    Returns:
        ``{"constant": metrics, "random": metrics}``.
    """
    base = pred.reset_index(drop=True)
    rng = np.random.default_rng([int(seed), 0x51])  # the random scorer's own stream
    scorers = {
        "constant": base.assign(probability=float(_check_threshold(threshold))),
        "random": base.assign(probability=rng.random(len(base))),
    }
    return {
        name: evaluate_predictions(table, how=how, threshold=threshold, bootstrap=bootstrap, ci=ci, seed=seed,
                                   null_draws=null_draws)
        for name, table in scorers.items()
    }
