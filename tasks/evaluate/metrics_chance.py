"""Models that know nothing: degenerate test probabilities, and the loss of a constant predictor.

:func:`degeneracy` flags a model whose test probabilities barely vary (a collapsed
network's AUC comes from float noise) or all fall on one side of the threshold;
:func:`chance_losses` gives the learning curves' chance lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tasks.evaluate.metrics_point import _check_threshold

__all__ = ["DEGENERATE_SPREAD", "NEAR_CONSTANT_GAP", "NEAR_CONSTANT_SPAN", "chance_losses",
           "constant_predictor_loss", "degeneracy"]

#: Test probabilities whose standard deviation is below this are "negligible spread":
#: a collapsed model (VGG16 from scratch at a high learning rate outputs 0.494899 +- 6e-7).
DEGENERATE_SPREAD = 1e-3
#: Near-constant outputs: the middle 90% of the probabilities spans less than this...
NEAR_CONSTANT_SPAN = 0.1
#: ... and the mean probability of tumour images differs from that of normal images by less
#: than this: the decision rests on the third decimal (a collapsed Adam run gave every image
#: 0.534-0.539), so any threshold that "works" is tuned to noise. Relative to the classes,
#: not an absolute SD: a model with narrow but well separated outputs is not degenerate.
NEAR_CONSTANT_GAP = 0.02


def degeneracy(
    probabilities: Sequence[float] | np.ndarray | pd.Series,
    threshold: float = 0.5,
    *,
    spread: float = DEGENERATE_SPREAD,
    labels: Sequence[int] | np.ndarray | pd.Series | None = None,
) -> tuple[bool, str | None]:
    """Whether a model's test probabilities are degenerate, and why.

    Degenerate: the standard deviation of the probabilities is below ``spread`` (the
    model gives every image about the same score, so its ranking, and its AUC, come from
    noise), every image falls on one side of ``threshold`` (all called tumour, or all
    called normal), or, given ``labels``, the outputs are near-constant relative to the
    classes: the middle 90% spans less than :data:`NEAR_CONSTANT_SPAN` and the class means
    differ by less than :data:`NEAR_CONSTANT_GAP`.

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
    if labels is not None and std >= spread:
        y = np.asarray(pd.Series(labels).astype("int64"))
        span = float(np.quantile(p, 0.95) - np.quantile(p, 0.05))
        if 0 < int(y.sum()) < y.size:
            gap = float(p[y == 1].mean() - p[y == 0].mean())
            if span < NEAR_CONSTANT_SPAN and abs(gap) < NEAR_CONSTANT_GAP:
                reasons.append(
                    f"the test probabilities are near-constant: the middle 90% spans {span:.3f} (below "
                    f"{NEAR_CONSTANT_SPAN:g}) and tumour images average only {gap:+.4f} above normal ones "
                    f"(below {NEAR_CONSTANT_GAP:g}): any threshold separating them is tuned to noise"
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

    The class weights are the ones training used (:func:`models.training.torchrun_entry.make_loaders`):
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
        ``class_balance``, and ``accuracy_train`` / ``accuracy_validation``: the accuracy of
        always answering the larger class.
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
    def majority(n_p: int, n_n: int) -> float | None:
        return max(n_p, n_n) / (n_p + n_n) if n_p + n_n else None

    return {
        "train": train,
        "validation": constant_predictor_loss(*counts["validation"], pos_weight),
        "pos_weight": pos_weight,
        "class_balance": class_balance,
        # Accuracy of always answering the larger class: the accuracy curve's chance line
        # (a balanced training stream, "sampler", makes it one half).
        "accuracy_train": 0.5 if class_balance == "sampler" and n_pos and n_neg else majority(n_pos, n_neg),
        "accuracy_validation": majority(*counts["validation"]),
    }

