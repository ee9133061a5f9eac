"""The trivial-score baseline: what a non-learned brightness score reaches on the evaluated images.

A lesion that lifts its tissue well above the texture is found by the brightest lesion-sized
spot of the image alone; a classifier that does no better than that has not shown it learned
more than brightness. Every evaluation therefore scores its own images with a small fixed
family of such scores (:data:`SCORES`):

* ``brightest_mean_<k>pct``: the largest mean grey level over a square window whose side is
  ``k`` % of the image side (a lesion-sized box filter, :func:`scipy.ndimage.uniform_filter`);
* ``percentile_<q>``: the ``q``-th percentile of the grey levels.

Which score counts is chosen on the **validation** split (the best image-level ROC AUC there)
and reported on the evaluated split, so the choice does not peek at the figures it is
compared with; without a usable validation split it is chosen on the evaluated split itself,
and ``chosen_on`` says so (that choice is optimistic for the baseline).

The model and the baseline are compared on the same images with a **paired** patient
bootstrap (:func:`paired_auc_difference`): each resample draws patients with replacement and
takes both AUCs on the same draw, so the interval of the difference is much narrower than
the two intervals side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy.ndimage import uniform_filter
from sklearn.metrics import roc_auc_score

from tasks.evaluate.metrics_point import How, aggregate

__all__ = ["SCORES", "choose_score", "image_scores", "paired_auc_difference", "score_images", "trivial_baseline"]

#: Window sides of the brightest-local-mean scores, in % of the image side (lesion sized:
#: the synthetic lesions span 4-19 % of the frame's long side).
WINDOWS_PCT = (5, 10, 15)
#: Percentiles of the grey levels.
PERCENTILES = (99.0, 99.9)


def _brightest_mean(pct: int) -> Callable[[np.ndarray], float]:
    def score(image: np.ndarray) -> float:
        side = max(2, int(round(pct / 100.0 * max(image.shape))))
        # "constant" (0) padding: a window half off the image is not brighter than one inside.
        return float(uniform_filter(image, size=side, mode="constant").max())
    return score


def _percentile(q: float) -> Callable[[np.ndarray], float]:
    return lambda image: float(np.percentile(image, q))


#: The fixed family of non-learned scores: name -> function of a float image in [0, 1].
SCORES: dict[str, Callable[[np.ndarray], float]] = {
    **{f"brightest_mean_{p}pct": _brightest_mean(p) for p in WINDOWS_PCT},
    **{f"percentile_{q:g}": _percentile(q) for q in PERCENTILES},
}


def image_scores(image: np.ndarray) -> dict[str, float]:
    """Every score of :data:`SCORES` for one grayscale image (uint8, or floats in [0, 1])."""
    img = np.asarray(image, dtype=np.float32)
    if np.issubdtype(np.asarray(image).dtype, np.integer):
        img = img / 255.0
    return {name: fn(img) for name, fn in SCORES.items()}


def score_images(rows: pd.DataFrame, root: Path) -> pd.DataFrame:
    """The scores of each row's PNG (``image_path`` relative to ``root``), one column per score.

    Raises:
        FileNotFoundError: a PNG is missing, named by its ``image_path``.
    """
    records = []
    for rel in rows["image_path"].astype(str):
        path = Path(root) / rel
        if not path.is_file():
            raise FileNotFoundError(f"{rel}: image of the manifest not found under {root} (prepare the data again)")
        with Image.open(path) as img:
            records.append(image_scores(np.asarray(img.convert("L"))))
    return pd.DataFrame(records, index=rows.index, columns=list(SCORES))


def _auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float | None:
    keep = np.ones(len(labels), bool) if weights is None else weights > 0
    y = labels[keep]
    if y.min(initial=1) == y.max(initial=0):
        return None
    return float(roc_auc_score(y, scores[keep], sample_weight=None if weights is None else weights[keep]))


def paired_auc_difference(
    table: pd.DataFrame, first: str, second: str, *, level: str = "slice", how: How = "max", n: int = 1000,
    ci: float = 0.95, seed: int = 0,
) -> dict[str, Any]:
    """ROC AUC of score column ``first`` minus that of ``second``, with a paired patient-bootstrap interval.

    Both columns are aggregated to ``level`` the way the model's probabilities are
    (:func:`tasks.evaluate.metrics_point.aggregate`); each resample draws patients with replacement
    (a patient drawn twice counts twice) and takes both AUCs on that same draw.

    Returns:
        ``first``, ``second``, ``difference`` (or ``None`` with one class), ``interval``
        (``[low, high]`` or ``None``), ``n_valid`` resamples, ``n_resamples``, ``seed``.
    """
    units = {c: aggregate(table.assign(probability=table[c]), level, how) for c in (first, second)}
    labels = units[first]["label"].to_numpy(np.int64)
    a, b = units[first]["probability"].to_numpy(float), units[second]["probability"].to_numpy(float)
    auc_a, auc_b = _auc(labels, a), _auc(labels, b)
    out: dict[str, Any] = {"first": auc_a, "second": auc_b, "difference": None, "interval": None,
                           "n_valid": 0, "n_resamples": int(n), "seed": int(seed)}
    if auc_a is None or auc_b is None:
        return out
    out["difference"] = auc_a - auc_b
    patients, codes = np.unique(units[first]["patient_id"].astype(str).to_numpy(), return_inverse=True)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(int(n)):
        counts = np.bincount(rng.integers(0, len(patients), len(patients)), minlength=len(patients))
        w = counts[codes].astype(float)
        da, db = _auc(labels, a, w), _auc(labels, b, w)
        if da is not None and db is not None:
            diffs.append(da - db)
    if diffs:
        alpha = (1.0 - ci) / 2.0
        low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
        out["interval"], out["n_valid"] = [float(low), float(high)], len(diffs)
    return out


def _select(candidates: pd.DataFrame, labels: np.ndarray) -> tuple[str, dict[str, float | None]]:
    """The score with the best image-level AUC on ``candidates`` (ties: the first in :data:`SCORES`)."""
    aucs = {name: _auc(labels, candidates[name].to_numpy(float)) for name in SCORES}
    best = max(SCORES, key=lambda name: -1.0 if aucs[name] is None else aucs[name])
    return best, aucs


def choose_score(manifest: pd.DataFrame, root: Path) -> str | None:
    """The score of :data:`SCORES` with the best image-level AUC on ``manifest``'s validation split (``None``
    when that split lacks a class): the choice made without looking at the images it is then reported on."""
    val = manifest[manifest["split"].eq("validation").fillna(False).astype(bool)]
    if "augmented_from" in val.columns:
        val = val[val["augmented_from"].isna()]
    if val["label"].nunique() != 2:
        return None
    return _select(score_images(val, root), val["label"].to_numpy(np.int64))[0]


def trivial_baseline(
    pred: pd.DataFrame, manifest: pd.DataFrame, root: Path, *, how: How = "max", bootstrap: int = 1000,
    ci: float = 0.95, seed: int = 0,
) -> dict[str, Any]:
    """The ``trivial`` block of ``metrics.json``: the best non-learned score beside the model.

    Args:
        pred: The model's slice prediction table (``image_path``, ``label``, ``probability``, ids).
        manifest: The manifest the images come from; its ``validation`` rows choose the score.
        root: Folder the ``image_path`` values are relative to.
        how, bootstrap, ci, seed: As for :func:`tasks.evaluate.metrics.evaluate_predictions`.

    Returns:
        ``score`` (the chosen name), ``chosen_on`` (``"validation"`` or the evaluated split),
        ``chosen_note``, ``candidates`` (name -> ``selection_roc_auc``, ``roc_auc`` on the
        evaluated images), and ``levels``: ``slice`` and ``patient`` -> ``roc_auc``,
        ``roc_auc_interval``, ``model_roc_auc``, ``model_minus_trivial`` with its paired
        ``difference_interval`` and ``beats_trivial`` (the interval's lower end above 0;
        ``None`` when undefined); ``note`` names a model that does not beat it.
    """
    evaluated = pred.reset_index(drop=True)
    scores = score_images(evaluated, root)
    split = str(evaluated["split"].iloc[0]) if "split" in evaluated.columns and len(evaluated) else "evaluated"
    frame = manifest.reset_index(drop=True)
    val = frame[frame["split"].eq("validation").fillna(False).astype(bool)]
    if "augmented_from" in val.columns:
        val = val[val["augmented_from"].isna()]
    usable = split != "validation" and val["label"].nunique() == 2
    if usable:
        chosen, selection = _select(score_images(val, root), val["label"].to_numpy(np.int64))
        chosen_on, note = "validation", "chosen on the validation split, reported on the evaluated images"
    else:
        chosen, selection = _select(scores, evaluated["label"].to_numpy(np.int64))
        chosen_on = split
        note = (f"chosen on the evaluated ({split}) images themselves (no validation split with both classes): "
                "optimistic for the baseline")
    labels = evaluated["label"].to_numpy(np.int64)
    table = evaluated.assign(**{f"trivial__{c}": scores[c].to_numpy() for c in SCORES})
    out: dict[str, Any] = {
        "score": chosen, "chosen_on": chosen_on, "chosen_note": note,
        "family": list(SCORES),
        "candidates": {name: {"selection_roc_auc": selection[name],
                              "roc_auc": _auc(labels, scores[name].to_numpy(float))} for name in SCORES},
        "levels": {},
    }
    from tasks.evaluate.metrics_bootstrap import bootstrap_intervals

    for level in ("slice", "patient"):
        paired = paired_auc_difference(table, "probability", f"trivial__{chosen}", level=level, how=how,
                                       n=bootstrap, ci=ci, seed=seed)
        own = bootstrap_intervals(table.assign(probability=table[f"trivial__{chosen}"]), level, how, n=bootstrap,
                                  ci=ci, seed=seed)["intervals"].get("roc_auc")
        interval = paired["interval"]
        beats = None if paired["difference"] is None else bool(
            (interval[0] if interval else paired["difference"]) > 0)
        out["levels"][level] = {
            "roc_auc": paired["second"], "roc_auc_interval": own, "model_roc_auc": paired["first"],
            "model_minus_trivial": paired["difference"], "difference_interval": interval,
            "beats_trivial": beats,
        }
    image = out["levels"]["slice"]
    out["beats_trivial"] = image["beats_trivial"]
    out["note"] = None
    if image["beats_trivial"] is False:
        out["note"] = (f"the model does NOT beat the trivial score {chosen} per image: ROC AUC "
                       f"{image['model_roc_auc']:.3f} vs {image['roc_auc']:.3f}, difference "
                       f"{image['model_minus_trivial']:+.3f}" + (
                           f" (paired 95% interval {image['difference_interval'][0]:+.3f} to "
                           f"{image['difference_interval'][1]:+.3f})" if image["difference_interval"] else ""))
    return out
