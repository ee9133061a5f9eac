"""The occlusion check: does the model look at the lesion?

Each positive test image's box is filled with the median of the tissue around it
(:func:`hide_boxes`), and :func:`occlusion_check` reports the fraction of tumour calls that
flip to normal and the mean drop in P(tumour): a measure a reader can trust that does not
depend on how fine a Grad-CAM map is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from models.explain.boxes import Box, box_pixels, boxed_positives, device_of, load_inputs
from models.nets.heads import logits_of

__all__ = ["hide_boxes", "occlusion_check"]


def hide_boxes(images: Tensor, boxes: Sequence[Box | None], *, margin: int | None = None) -> Tensor:
    """Copies of ``images`` with each box filled with the median of the tissue around it.

    The surround is a ring ``margin`` pixels wide outside the box (default: a quarter of
    the box's longer side, at least 2); pixels that are exactly 0 (air, letterbox padding)
    are left out of the median when any tissue is there. An image without a box is
    returned unchanged.

    Args:
        images: ``(B, C, H, W)`` float images.
        boxes: One ``(x, y, w, h)`` box (input pixels) or ``None`` per image.
        margin: Width of the ring in pixels.
    """
    out = images.clone()
    height, width = images.shape[-2:]
    for i, box in enumerate(boxes):
        if box is None:
            continue
        rows, cols = box_pixels(box, height, width)
        if rows.start >= rows.stop or cols.start >= cols.stop:
            continue
        m = margin if margin is not None else max(2, round(max(box[2], box[3]) / 4))
        outer_r = slice(max(0, rows.start - m), min(height, rows.stop + m))
        outer_c = slice(max(0, cols.start - m), min(width, cols.stop + m))
        ring = torch.ones(height, width, dtype=torch.bool)
        ring[rows, cols] = False
        keep = torch.zeros_like(ring)
        keep[outer_r, outer_c] = True
        ring &= keep
        for c in range(images.shape[1]):
            values = images[i, c][ring]
            tissue = values[values != 0]
            values = tissue if tissue.numel() else values
            if values.numel():
                out[i, c, rows, cols] = values.median()
    return out


def _probabilities(model: nn.Module, images: Tensor, batch_size: int) -> np.ndarray:
    device = device_of(model)
    out = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            logits = logits_of(model(images[start : start + batch_size].to(device=device, dtype=torch.float32)))
            out.append(logits.float().reshape(-1).cpu().numpy().astype(np.float64))
    # float64 sigmoid, as models.inference.predict does.
    return 1.0 / (1.0 + np.exp(-np.concatenate(out))) if out else np.zeros(0)


def occlusion_check(
    model: nn.Module,
    manifest_rows: pd.DataFrame,
    root: str | os.PathLike[str],
    image_size: int,
    *,
    threshold: float = 0.5,
    batch_size: int = 16,
    margin: int | None = None,
) -> dict[str, Any]:
    """Does the model look at the lesion? Hide each positive image's box and watch P(tumour).

    Each boxed positive image (offline-augmented copies left out) is scored as it is and
    with its box filled with the median of the surrounding tissue (:func:`hide_boxes`).
    A model that found the tumour in the lesion calls the image normal once the lesion is
    hidden; one that used something else keeps its call.

    Args:
        model: The classifier (inputs go to its device).
        manifest_rows: Rows with ``label``, ``image_path`` and the box columns.
        root: Folder the ``image_path`` values are relative to.
        image_size: The network input side.
        threshold: Decision threshold (at or above: tumour).
        batch_size: Images per forward pass.
        margin: Width of the surrounding ring in input pixels (default: see :func:`hide_boxes`).

    Returns:
        ``flip_fraction``: of the boxed positive images called tumour, the fraction called
        normal once the box is hidden (``None`` when none was called tumour, with
        ``reason``); ``mean_drop``: mean over all boxed positive images of P(tumour) minus
        P(tumour) with the box hidden (``None`` without images); ``n``,
        ``n_called_positive``, ``flips``, ``mean_probability``, ``mean_probability_hidden``,
        ``threshold`` and ``method``.
    """
    rows = boxed_positives(manifest_rows)
    out: dict[str, Any] = {
        "flip_fraction": None, "mean_drop": None, "n": int(len(rows)), "n_called_positive": 0, "flips": 0,
        "mean_probability": None, "mean_probability_hidden": None, "threshold": float(threshold),
        "method": "each lesion box filled with the median of the surrounding tissue",
    }
    if rows.empty:
        out["reason"] = "no positive image with a lesion box in these rows"
        return out
    was_training = model.training
    model.eval()
    shown: list[np.ndarray] = []
    hidden: list[np.ndarray] = []
    try:
        for start in range(0, len(rows), batch_size):
            images, boxes = load_inputs(rows.iloc[start : start + batch_size], root, image_size)
            shown.append(_probabilities(model, images, batch_size))
            hidden.append(_probabilities(model, hide_boxes(images, boxes, margin=margin), batch_size))
    finally:
        model.train(was_training)
    before, after = np.concatenate(shown), np.concatenate(hidden)
    called = before >= threshold
    flips = called & (after < threshold)
    out.update(
        n_called_positive=int(called.sum()), flips=int(flips.sum()),
        mean_drop=float(np.mean(before - after)), mean_probability=float(before.mean()),
        mean_probability_hidden=float(after.mean()),
    )
    if called.any():
        out["flip_fraction"] = float(flips.sum() / called.sum())
    else:
        out["reason"] = f"no positive image was called tumour at threshold {threshold:g}, so no call can flip"
    return out

