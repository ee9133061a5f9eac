"""References for the localisation and occlusion checks: what they would show by chance or by brightness.

A Grad-CAM peak inside the lesion box on 5 of 9 images means little on its own: a random
point lands in the box with probability box area / image area, and the brightest spot of a
synthetic image lands there almost always. Likewise, a drop in P(tumour) when the lesion is
hidden means little if hiding any patch of tissue of the same size does as much.

* :func:`localisation_references`: the chance rate (mean box area over image area) and the
  hit fraction of the brightest lesion-sized spot, on the same boxed tumour images.
* :func:`occlusion_control`: the occlusion check with a same-size box of tissue elsewhere in
  each image hidden instead of the lesion.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
from scipy.ndimage import uniform_filter
from torch import nn

from models.explain.boxes import Box, boxed_positives, load_inputs, peak_in_box
from models.explain.occlusion import _probabilities, hide_boxes

__all__ = ["control_box", "localisation_references", "occlusion_control"]

#: Side of the brightest-spot window, as a fraction of the image side (a mid-sized lesion).
BRIGHT_WINDOW = 0.10


def localisation_references(rows: pd.DataFrame, root: str | os.PathLike[str], image_size: int) -> dict[str, Any]:
    """Chance and brightest-spot hit rates on the boxed tumour images the localisation check uses.

    Returns:
        ``chance_fraction`` (mean of box area / image area: a uniformly random peak's hit
        rate), ``brightest_hits`` and ``brightest_fraction`` (images whose brightest
        ``BRIGHT_WINDOW``-sized mean lies in the box), ``n``; fractions ``None`` without images.
    """
    boxed = boxed_positives(rows)
    out: dict[str, Any] = {"n": int(len(boxed)), "chance_fraction": None, "brightest_fraction": None,
                           "brightest_hits": 0, "brightest_window": BRIGHT_WINDOW}
    if boxed.empty:
        return out
    images, boxes = load_inputs(boxed, root, image_size)
    areas, hits = [], 0
    side = max(2, round(BRIGHT_WINDOW * image_size))
    for image, box in zip(images[:, 0].numpy(), boxes):
        if box is None:
            continue
        areas.append(min(1.0, box[2] * box[3] / float(image_size * image_size)))
        hits += peak_in_box(uniform_filter(image, size=side, mode="constant") + 1e-6, box)
    if areas:
        out.update(chance_fraction=float(np.mean(areas)), brightest_hits=int(hits),
                   brightest_fraction=hits / len(areas))
    return out


def control_box(image: np.ndarray, box: Box, rng: np.random.Generator, tries: int = 200) -> Box | None:
    """A box of the same size elsewhere in the tissue: no overlap with ``box``, every pixel non-zero.

    Candidates are drawn uniformly (``rng``); ``None`` when none of ``tries`` fits (a lesion
    that fills the breast).
    """
    height, width = image.shape
    x, y, w, h = box
    wi, hi = max(1, int(round(w))), max(1, int(round(h)))
    if wi >= width or hi >= height:
        return None
    tissue = image > 0
    for _ in range(tries):
        cx, cy = int(rng.integers(0, width - wi + 1)), int(rng.integers(0, height - hi + 1))
        if cx < x + w and x < cx + wi and cy < y + h and y < cy + hi:
            continue
        if tissue[cy:cy + hi, cx:cx + wi].all():
            return (float(cx), float(cy), float(wi), float(hi))
    return None


def occlusion_control(
    model: nn.Module, rows: pd.DataFrame, root: str | os.PathLike[str], image_size: int, *,
    threshold: float = 0.5, batch_size: int = 16, seed: int = 0,
) -> dict[str, Any]:
    """The occlusion check's control: hide a same-size box of tissue away from the lesion instead.

    Returns:
        ``flip_fraction`` (of the images called tumour, those called normal with the control
        box hidden), ``mean_drop``, ``n`` (images with a control box placed), ``n_unplaced``,
        ``n_called_positive``, ``flips``, ``method``; ``None`` values (with ``reason``) without images.
    """
    boxed = boxed_positives(rows)
    out: dict[str, Any] = {"flip_fraction": None, "mean_drop": None, "n": 0, "n_unplaced": 0, "flips": 0,
                           "n_called_positive": 0,
                           "method": "a same-size box of tissue away from the lesion, filled like the lesion box"}
    rng = np.random.default_rng([int(seed), 0xC0])
    before, after = [], []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(boxed), batch_size):
            images, boxes = load_inputs(boxed.iloc[start:start + batch_size], root, image_size)
            controls = [None if b is None else control_box(img[0].numpy(), b, rng) for img, b in zip(images, boxes)]
            keep = [i for i, c in enumerate(controls) if c is not None]
            out["n_unplaced"] += len(controls) - len(keep)
            if not keep:
                continue
            chosen = images[keep]
            before.append(_probabilities(model, chosen, batch_size))
            after.append(_probabilities(model, hide_boxes(chosen, [controls[i] for i in keep]), batch_size))
    finally:
        model.train(was_training)
    if not before:
        out["reason"] = "no tumour image with a lesion box and room for a control box"
        return out
    b, a = np.concatenate(before), np.concatenate(after)
    called = b >= threshold
    flips = called & (a < threshold)
    out.update(n=int(len(b)), mean_drop=float(np.mean(b - a)), n_called_positive=int(called.sum()),
               flips=int(flips.sum()))
    if called.any():
        out["flip_fraction"] = float(flips.sum() / called.sum())
    else:
        out["reason"] = f"no tumour image was called tumour at threshold {threshold:g}"
    return out
