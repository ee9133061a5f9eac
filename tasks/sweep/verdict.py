"""What a training-size sweep can defend: pooled differences over repeats, and a verdict per size.

At each size the question is whether a starting point beats the reference (the sweep's first
``--weights``, usually scratch). Two sources of variance stand between the figures and an
answer: the test patients (a few dozen) and the training run itself (which subset, which
initial seed). :func:`pooled_difference` takes both: each bootstrap resample draws the
repeats with replacement and the test patients with replacement, and averages over the drawn
repeats the AUC difference of the paired runs (same subset, same seed offset) on the drawn
patients. Its point estimate is the mean difference over repeats.

The same pooling puts each arm beside the trivial brightness score
(:mod:`tasks.evaluate.trivial_scores`) on the same images, and :func:`size_verdicts` says, per
size and starting point:

* ``helps``: the pre-trained arm beats the trivial score (pooled interval above 0) and the
  pooled difference's interval lies above 0;
* ``hurts``: the reference arm beats the trivial score and the interval lies below 0;
* ``no answer`` otherwise, with the reasons in words: an arm under-trained (capped by
  ``--epochs``/``--max-batches`` before early stopping), neither arm (or not the pre-trained
  one) beats the brightness score, the interval includes 0.

Where the start has a zero-shot row (the starting model on the target's test split before any
fine-tuning), each verdict also gives that AUC beside the fine-tuned arm's mean over repeats,
so a reader sees whether the difference comes from the start itself or from fine-tuning on it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["pooled_difference", "size_verdicts", "trivial_predictions"]

_KEYS = ("patient_id", "study_uid", "view", "slice_index")


def trivial_predictions(predictions: str | Path, metrics: str | Path, manifest: str | Path) -> pd.DataFrame:
    """The test images scored by the trivial score the evaluation chose (on validation), as a prediction table."""
    import json

    from tasks.evaluate.trivial_scores import SCORES, score_images

    pred = pd.read_parquet(predictions)
    chosen = (json.loads(Path(metrics).read_text()).get("trivial") or {}).get("score")
    if chosen not in SCORES:
        raise ValueError(f"{metrics}: no trivial score recorded; evaluate again with this tomoflow version")
    scores = score_images(pred, Path(manifest).parent)
    return pred.assign(probability=scores[chosen].to_numpy(float))


def _aligned(pairs: Sequence[tuple[pd.DataFrame, pd.DataFrame]]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                              list[np.ndarray]]:
    """Labels, base and other probabilities (repeats x images) on one image order, and the patients' rows."""
    keys = [k for k in _KEYS if all(k in b.columns and k in o.columns for b, o in pairs)]
    merged = []
    for base, other in pairs:
        m = base[[*keys, "label", "probability"]].merge(other[[*keys, "probability"]], on=keys, how="inner",
                                                         suffixes=("", "_other"), validate="one_to_one")
        if len(m) != len(base) or len(m) != len(other):
            raise ValueError("pooled comparison: the prediction tables hold different images; compare models on "
                             "the same test split")
        merged.append(m.sort_values(keys).reset_index(drop=True))
    first = merged[0]
    if any(not m[keys].equals(first[keys]) for m in merged[1:]):
        raise ValueError("pooled comparison: the repeats were evaluated on different images")
    codes = pd.factorize(first["patient_id"], sort=True)[0]
    groups = [np.flatnonzero(codes == c) for c in range(codes.max() + 1)] if len(codes) else []
    return (first["label"].to_numpy(int), np.stack([m["probability"].to_numpy(float) for m in merged]),
            np.stack([m["probability_other"].to_numpy(float) for m in merged]), groups)


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None


def pooled_difference(pairs: Sequence[tuple[pd.DataFrame, pd.DataFrame]], *, n: int = 1000, ci: float = 0.95,
                      seed: int = 0) -> dict[str, Any]:
    """Image-level ROC AUC of ``other`` minus ``base``, averaged over repeats, with a two-level bootstrap interval.

    Args:
        pairs: One ``(base, other)`` pair of prediction tables per repeat, all on the same images.
        n: Resamples; each draws the repeats and the test patients with replacement.
        ci: Confidence level (percentile interval).
        seed: Seed of the draws.

    Returns:
        ``difference`` (mean over repeats), ``low``, ``high`` (``None`` when no resample had
        both classes), ``per_repeat`` (each repeat's difference), ``repeats``, ``n_valid``.
    """
    y, base, other, groups = _aligned(pairs)
    per_repeat = []
    for b, o in zip(base, other):
        ab, ao = _auc(y, b), _auc(y, o)
        per_repeat.append(None if ab is None or ao is None else ao - ab)
    valid = [d for d in per_repeat if d is not None]
    rng = np.random.default_rng(seed)
    samples = []
    repeats = len(pairs)
    for _ in range(n):
        drawn = rng.integers(0, repeats, repeats) if repeats > 1 else np.zeros(1, dtype=int)
        rows = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        if not 0 < y[rows].sum() < len(rows):
            continue
        diffs = [_auc(y[rows], other[r][rows]) - _auc(y[rows], base[r][rows]) for r in drawn]
        samples.append(float(np.mean(diffs)))
    tail = 100 * (1 - ci) / 2
    low, high = (float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))) if samples \
        else (None, None)
    return {"difference": float(np.mean(valid)) if valid else None, "low": low, "high": high,
            "per_repeat": per_repeat, "repeats": repeats, "n_valid": len(samples),
            "bootstrap": {"n_resamples": int(n), "seed": int(seed), "ci": ci,
                          "unit": "repeat, then patient (two-level, percentile)"}}


def _beats(vs_trivial: Mapping[str, Any] | None) -> bool:
    return bool(vs_trivial and vs_trivial.get("low") is not None and vs_trivial["low"] > 0)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def _start_vs_zero_shot(table: pd.DataFrame, start: str, fraction: float, name: str) -> tuple[
        float | None, float | None, str]:
    """The start's zero-shot AUC, its fine-tuned mean AUC at ``fraction``, and a sentence on the two."""
    own = table[table["weights"] == start]
    zero = pd.to_numeric(own.loc[own["fraction"] == 0, "roc_auc"], errors="coerce").dropna()
    tuned = pd.to_numeric(own.loc[own["fraction"] == fraction, "roc_auc"], errors="coerce").dropna()
    if zero.empty or tuned.empty:
        return None, None, ""
    z, m = float(zero.iloc[0]), float(tuned.mean())
    moved = ("fine-tuning on the target did not raise it above its start" if m <= z
             else f"fine-tuning raised it by {m - z:+.3f} (a mean over repeats, without an interval)")
    return z, m, (f" Before any fine-tuning, {name} alone scored AUC {z:.3f} on the same test split; fine-tuned, "
                  f"{m:.3f} on average over {len(tuned)} repeat(s): {moved}.")


def size_verdicts(table: pd.DataFrame, differences: Sequence[Mapping[str, Any]],
                  versus_trivial: Mapping[tuple[str, float], Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The verdict per size and non-reference starting point, with its reasons and one sentence.

    Args:
        table: :func:`tasks.sweep.analysis.sweep_table` (its ``capped`` and ``train_patients`` columns).
        differences: Pooled differences (``fraction``, ``weights``, ``reference``, ``roc_auc_difference``,
            ``low``, ``high``, ``repeats``).
        versus_trivial: ``(weights, fraction)`` -> the arm's pooled difference against the trivial score.
    """
    out = []
    for d in differences:
        f, start, ref = d["fraction"], d["weights"], d["reference"]
        rows = table[(table["fraction"] == f) & table["weights"].isin([start, ref])]
        names = dict(zip(table["weights"], table["start"]))
        patients = int(rows["train_patients"].max()) if len(rows) else 0
        reasons = []
        capped = sorted({names[w] for w in rows.loc[rows["capped"].astype(bool), "weights"]})
        if capped:
            reasons.append(f"an arm is under-trained: {', '.join(capped)} stopped at the --epochs/--max-batches cap "
                           "before early stopping said it had learned what it can")
        pre, base = _beats(versus_trivial.get((start, f))), _beats(versus_trivial.get((ref, f)))
        if not pre and not base:
            reasons.append("neither arm beats the brightness score (trivial floor)")
        low, high = d.get("low"), d.get("high")
        if low is None or high is None:
            reasons.append("the difference has no interval (a class missing from the test split)")
        elif low <= 0 <= high:
            reasons.append(f"the interval of the difference includes 0 ([{low:+.3f}, {high:+.3f}])")
        verdict = "no answer"
        if not capped and low is not None and high is not None:
            if low > 0 and pre:
                verdict = "helps"
            elif high < 0 and base:
                verdict = "hurts"
            elif low > 0 and not pre and not reasons:
                reasons.append(f"the pre-trained arm {names.get(start, start)} does not beat the brightness score")
            elif high < 0 and not base and not reasons:
                reasons.append(f"the reference arm {names.get(ref, ref)} does not beat the brightness score")
        if verdict != "no answer":
            reasons = []
        what = (f"{names.get(start, start)} against {names.get(ref, ref)} at {patients} training patients "
                f"(fraction {f:g}), AUC difference {_fmt(d['roc_auc_difference'])} [{_fmt(low)}, {_fmt(high)}] "
                f"pooled over {d.get('repeats', 1)} repeat(s)")
        zero, tuned, start_note = _start_vs_zero_shot(table, start, f, names.get(start, start))
        sentence = (f"Pre-training {verdict}: {what}." if verdict != "no answer"
                    else f"No answer for {what}: " + "; ".join(reasons) + ".") + start_note
        out.append({"fraction": f, "train_patients": patients, "weights": start, "start": names.get(start, start),
                    "reference": ref, "verdict": verdict, "reasons": reasons, "sentence": sentence,
                    "pretrained_beats_trivial": pre, "reference_beats_trivial": base,
                    "zero_shot_roc_auc": zero, "fine_tuned_roc_auc": tuned})
    return out


def pooled_comparisons(runs: list[dict[str, Any]], bootstrap: int, ci: float, seed: int) -> dict[str, Any]:
    """Differences against the reference start, each arm against the trivial score, and the floor.

    Args:
        runs: The sweep's runs as :meth:`tasks.sweep.plan.SweepRun.record` gives them (zero-shot runs are skipped).
        bootstrap, ci, seed: The patient bootstrap of :func:`pooled_difference`.
    """
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
