"""Bootstrap intervals and the null baseline of the metrics.

Intervals. Slices, volumes and views of one patient are not independent, so
:func:`bootstrap_intervals` resamples **patients** with replacement (all of a patient's
rows go together), recomputes every metric at the level, and reports percentile intervals
over the resamples in which the metric is defined, with the count of those. A resample is
computed exactly as if the drawn patients' rows were duplicated (integer weights, the
same arithmetic as scikit-learn's), from per-patient sums and vectorised over resamples:
a thousand resamples of 100,000 slices of 2,000 patients take seconds.

Null baseline. With max aggregation a patient with more images beats one with fewer on
*random* scores: :func:`null_roc_auc` shuffles the model's slice scores, aggregates them
exactly as the model's, and gives the mean and 95% range of the ROC AUC over seeded draws.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from tasks.evaluate.metrics_point import (
    LEVEL_KEYS,
    METRICS,
    How,
    Level,
    _as_arrays,
    _check_level,
    _check_threshold,
    aggregate,
)
from tasks.core.schema import POSITIVE_COHORTS

__all__ = ["NULL_DRAWS", "bootstrap_intervals", "null_roc_auc"]

#: Draws of the permutation null of every level's ROC AUC.
NULL_DRAWS = 200



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

