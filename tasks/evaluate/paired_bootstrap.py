"""Differences between image-level figures, with patient-bootstrap intervals.

Two questions of the transfer study need the interval of a *difference*, not two intervals
side by side (overlapping intervals do not mean "no difference"):

* :func:`gap_interval`: a model on another collection versus on its own test split (two
  independent samples of patients: each is resampled on its own);
* :func:`paired_difference`: two models on the *same* test images (starting points of a
  training-size sweep): patients are drawn once per resample and both models scored on
  the draw, so what the patients share cancels out.

The unit resampled is the patient (a patient's images are correlated); the figures are
image (slice) level, the study's unit. Percentile intervals; resamples where a figure is
undefined (one class drawn only) are left out and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FIGURES", "gap_interval", "paired_difference"]

#: The figures compared (image level).
FIGURES = ("roc_auc", "accuracy", "sensitivity", "specificity")


def _figures(pred: pd.DataFrame, threshold: float) -> dict[str, float | None]:
    """The figures of one table or resample (``None`` where a class is missing).

    Thousands of resamples call this, so it counts with numpy and asks scikit-learn only for
    the AUC; :func:`tasks.evaluate.metrics_point.binary_metrics` (its reference, checked in the tests)
    computes far more than these four.
    """
    from sklearn.metrics import roc_auc_score

    y = pred["label"].to_numpy().astype(int)
    called = pred["probability"].to_numpy() >= threshold
    pos, neg = y == 1, y == 0
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    return {
        "roc_auc": float(roc_auc_score(y, pred["probability"].to_numpy())) if n_pos and n_neg else None,
        "accuracy": float((called == pos).mean()) if len(y) else None,
        "sensitivity": float(called[pos].mean()) if n_pos else None,
        "specificity": float((~called[neg]).mean()) if n_neg else None,
    }


def _patient_rows(pred: pd.DataFrame) -> list[np.ndarray]:
    codes = pd.factorize(pred["patient_id"], sort=True)[0]
    return [np.flatnonzero(codes == c) for c in range(codes.max() + 1)] if len(codes) else []


def _draw(rng: np.random.Generator, groups: list[np.ndarray]) -> np.ndarray:
    picks = rng.integers(0, len(groups), len(groups))
    return np.concatenate([groups[i] for i in picks])


def _interval(samples: list[float], ci: float) -> list[float] | None:
    if not samples:
        return None
    tail = 100 * (1 - ci) / 2
    return [float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))]


def _summarise(point: dict[str, float | None], samples: dict[str, list[float]], n: int, ci: float,
               seed: int) -> dict[str, Any]:
    return {
        "difference": point,
        "intervals": {k: _interval(samples[k], ci) for k in FIGURES},
        "n_valid": {k: len(samples[k]) for k in FIGURES},
        "bootstrap": {"n_resamples": int(n), "seed": int(seed), "unit": "patient", "method": "percentile", "ci": ci},
    }


def _minus(a: dict[str, float | None], b: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (None if a[k] is None or b[k] is None else float(a[k] - b[k])) for k in FIGURES}


def gap_interval(own: pd.DataFrame, other: pd.DataFrame, *, threshold: float = 0.5, n: int = 1000,
                 ci: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """``other - own`` for each figure of :data:`FIGURES`, with a bootstrap interval.

    Args:
        own: Predictions on the model's own test split (``patient_id``, ``label``, ``probability``).
        other: Predictions on the other collection.
        threshold: Decision threshold.
        n: Resamples (each draws the patients of ``own`` and of ``other`` independently).
        ci: Confidence level.
        seed: Seed of the draws.

    Returns:
        ``own``, ``other`` (the figures), ``difference`` (other - own), ``intervals``,
        ``n_valid`` and ``bootstrap``.
    """
    a, b = _figures(own, threshold), _figures(other, threshold)
    rng = np.random.default_rng(seed)
    ga, gb = _patient_rows(own), _patient_rows(other)
    samples: dict[str, list[float]] = {k: [] for k in FIGURES}
    for _ in range(n):
        diff = _minus(_figures(other.iloc[_draw(rng, gb)], threshold), _figures(own.iloc[_draw(rng, ga)], threshold))
        for k, v in diff.items():
            if v is not None:
                samples[k].append(v)
    return {"own": a, "other": b, **_summarise(_minus(b, a), samples, n, ci, seed)}


def paired_difference(base: pd.DataFrame, other: pd.DataFrame, *, keys: Sequence[str] = (
        "patient_id", "study_uid", "view", "slice_index"), threshold: float = 0.5, n: int = 1000, ci: float = 0.95,
        seed: int = 0) -> dict[str, Any]:
    """``other - base`` on the same images, with a paired patient-bootstrap interval.

    Args:
        base: Predictions of the reference model (e.g. trained from scratch).
        other: Predictions of the compared model on the same images (matched on ``keys``).
        keys: Columns that identify an image.
        threshold, n, ci, seed: As :func:`gap_interval`.

    Raises:
        ValueError: The two tables do not hold the same images.
    """
    keys = [k for k in keys if k in base.columns and k in other.columns]
    merged = base.merge(other[[*keys, "probability"]], on=keys, how="inner", suffixes=("", "_other"),
                        validate="one_to_one")
    if len(merged) != len(base) or len(merged) != len(other):
        raise ValueError(
            f"paired comparison: the two prediction tables hold different images ({len(base)} and {len(other)} rows, "
            f"{len(merged)} shared); compare models on the same test split"
        )
    b = merged.assign(probability=merged["probability_other"])
    point = _minus(_figures(b, threshold), _figures(merged, threshold))
    rng = np.random.default_rng(seed)
    groups = _patient_rows(merged)
    samples: dict[str, list[float]] = {k: [] for k in FIGURES}
    for _ in range(n):
        rows = _draw(rng, groups)
        diff = _minus(_figures(b.iloc[rows], threshold), _figures(merged.iloc[rows], threshold))
        for k, v in diff.items():
            if v is not None:
                samples[k].append(v)
    return {"base": _figures(merged, threshold), "other": _figures(b, threshold),
            **_summarise(point, samples, n, ci, seed)}
