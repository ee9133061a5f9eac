"""Metrics of a classifier's predictions: per slice, per volume and per patient, with intervals.

The study judges a model by accuracy, sensitivity and specificity; this module adds what a
reader needs to weigh them: ROC AUC, predictive values, F1, the Brier score and a
reliability diagram, the number of cases behind each figure, and bootstrap confidence
intervals. Point metrics come from scikit-learn.

Levels. A prediction table (:func:`models.inference.predict.predict`) has one row per slice.
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

Intervals. :func:`bootstrap_intervals` resamples **patients** with replacement (one
patient's slices and views are not independent evidence) and reports percentile intervals.

The parts live in :mod:`tasks.evaluate.metrics_point` (aggregation, point metrics, calibration),
:mod:`tasks.evaluate.metrics_bootstrap` (intervals and the null baseline) and
:mod:`tasks.evaluate.metrics_chance` (degenerate models, chance losses); this module puts them
together in :func:`evaluate_predictions` (``metrics.json``); import each part from its own module.
"""


from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from tasks.evaluate.metrics_bootstrap import NULL_DRAWS, _bootstrap_table, _check_bootstrap, null_roc_auc
from tasks.evaluate.metrics_chance import degeneracy
from tasks.core.schema import POSITIVE_COHORTS
from tasks.evaluate.metrics_point import (
    HOWS,
    LEVELS,
    METRICS,
    How,
    _as_arrays,
    _check_threshold,
    aggregate,
    binary_metrics,
    calibration,
)

__all__ = [
    "LEVELS",
    "METRICS",
    "NULL_DRAWS",
    "POSITIVE_COHORTS",
    "SCHEMA",
    "aggregate",
    "binary_metrics",
    "calibration",
    "degeneracy",
    "evaluate_predictions",
    "floor_scorers",
    "floor_tables",
    "null_roc_auc",
]

#: Version tag of the dict :func:`evaluate_predictions` returns (``metrics.json``).
SCHEMA = "tomoflow-metrics/1"


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


def _level_result(pred: pd.DataFrame, level: str, how: How, t: float, *, bootstrap: int, ci: float, seed: int,
                  calibration_bins: int, null_draws: int) -> dict[str, Any]:
    """One level's entry of ``metrics.json`` (see :func:`evaluate_predictions`)."""
    table = aggregate(pred, level, how)
    point = binary_metrics(table["label"], table["probability"], t)
    boot = _bootstrap_table(table, level=level, how=how, threshold=t, n=bootstrap, ci=ci, seed=seed)
    by_cohort = _cohort_metrics(table, t)
    for name, entry in by_cohort.items():
        entry["intervals"] = {m: boot["intervals"].get(f"{m}_{name}") for m in ("sensitivity", "roc_auc")}
        entry["n_valid"] = {m: boot["n_valid"].get(f"{m}_{name}", 0) for m in ("sensitivity", "roc_auc")}
    entry = {
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
    entry["null_roc_auc"] = null["null_roc_auc"]
    entry["null_roc_auc_range"] = null["null_roc_auc_range"]
    _null_verdict(entry, null)
    return entry


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
        pred: Slice prediction table from :func:`models.inference.predict.predict`.
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
    if how not in HOWS:
        raise ValueError(f"aggregate {how!r} is not one of the allowed methods {list(HOWS)}")
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
    result["degenerate"], result["degenerate_reason"] = degeneracy(pred["probability"], t, labels=pred["label"])
    for level in LEVELS:
        result["levels"][level] = _level_result(pred, level, how, t, bootstrap=int(bootstrap), ci=ci, seed=seed,
                                                calibration_bins=calibration_bins, null_draws=null_draws)
        result["n"][level] = result["levels"][level]["n"]
    return result


def floor_tables(pred: pd.DataFrame, *, threshold: float = 0.5, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The prediction tables of :func:`floor_scorers`' two scorers (``constant``, ``random``) on ``pred``'s images."""
    base = pred.reset_index(drop=True)
    rng = np.random.default_rng([int(seed), 0x51])  # the random scorer's own stream
    return {
        "constant": base.assign(probability=float(_check_threshold(threshold))),
        "random": base.assign(probability=rng.random(len(base))),
    }


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
    scorers = floor_tables(pred, threshold=threshold, seed=seed)
    return {
        name: evaluate_predictions(table, how=how, threshold=threshold, bootstrap=bootstrap, ci=ci, seed=seed,
                                   null_draws=null_draws)
        for name, table in scorers.items()
    }
