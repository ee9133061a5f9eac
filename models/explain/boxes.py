"""Lesion boxes and the network inputs they belong to, for Grad-CAM and the occlusion check.

A box is ``(x, y, width, height)`` in pixels; pixel ``(row, col)`` lies in a box when its
centre ``(col + 0.5, row + 0.5)`` does (:func:`peak_in_box`, :func:`box_pixels`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from models.training.augment import eval_transforms, open_gray

__all__ = ["Box", "box_of", "box_pixels", "boxed_positives", "device_of", "load_inputs", "peak_in_box"]

#: A lesion box ``(x, y, width, height)`` in pixels of the image it belongs to.
Box = tuple[float, float, float, float]

_BOX_COLUMNS = ("box_x", "box_y", "box_width", "box_height")


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without any)."""
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def box_of(value: Mapping[str, Any] | Sequence[float] | pd.Series | None) -> Box | None:
    """A box as ``(x, y, width, height)`` floats, or ``None`` when absent or incomplete.

    Accepts a sequence of four numbers, or a mapping / row with ``box_x``, ``box_y``,
    ``box_width``, ``box_height`` (a manifest row) or ``x``, ``y``, ``width``, ``height``.
    """
    if value is None:
        return None
    if isinstance(value, (Mapping, pd.Series)):
        keys = _BOX_COLUMNS if "box_x" in value else ("x", "y", "width", "height")
        if not all(k in value for k in keys):
            return None
        raw = [value[k] for k in keys]
    else:
        raw = list(value)
        if len(raw) != 4:
            raise ValueError(f"a box is (x, y, width, height), got {value!r}")
    try:
        numbers = [float(v) for v in raw]
    except (TypeError, ValueError):  # pd.NA and other nulls
        return None
    if not all(math.isfinite(v) for v in numbers) or numbers[2] <= 0 or numbers[3] <= 0:
        return None
    return (numbers[0], numbers[1], numbers[2], numbers[3])


def peak_in_box(heatmap: np.ndarray | Tensor, box: Box | Sequence[float] | Mapping[str, Any]) -> bool:
    """Whether the heat map's maximum lies inside the box.

    The peak is the first maximal pixel (``argmax``); pixel ``(row, col)`` counts as inside
    when its centre ``(col + 0.5, row + 0.5)`` lies in ``[x, x + width] x [y, y + height]``,
    so an integer box ``x, y, w, h`` holds columns ``x .. x + w - 1`` and rows
    ``y .. y + h - 1``. A map with no positive value has no peak: ``False``.

    Args:
        heatmap: ``(H, W)`` map.
        box: ``(x, y, width, height)`` in the map's pixel coordinates.

    Raises:
        ValueError: ``heatmap`` isn't 2-D, or ``box`` isn't a valid box.
    """
    array = heatmap.detach().cpu().numpy() if isinstance(heatmap, Tensor) else np.asarray(heatmap)
    if array.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H, W), got shape {array.shape}")
    parsed = box_of(box)
    if parsed is None:
        raise ValueError(f"box {box!r} is not a valid (x, y, width, height) box")
    if array.size == 0 or not np.isfinite(array).all() or array.max() <= 0:
        return False
    row, col = np.unravel_index(int(np.argmax(array)), array.shape)
    x, y, w, h = parsed
    return bool(x <= col + 0.5 <= x + w and y <= row + 0.5 <= y + h)


def load_inputs(
    rows: pd.DataFrame, root: str | os.PathLike[str], image_size: int
) -> tuple[Tensor, list[Box | None]]:
    """The network inputs of manifest rows and their boxes scaled to the input size.

    Boxes in the manifest are in the PNG's own pixel coordinates; the PNG is resized to
    ``image_size`` x ``image_size`` (:func:`~models.training.augment.eval_transforms`), so each box
    is scaled by ``image_size / PNG width`` and ``image_size / PNG height``.

    Returns:
        ``(images, boxes)``: ``(N, 1, S, S)`` float32 in [0, 1], and a box or ``None`` per row.

    Raises:
        FileNotFoundError: A PNG is missing (named by its ``image_path``).
    """
    root = Path(root)
    transform = eval_transforms(image_size)
    images: list[Tensor] = []
    boxes: list[Box | None] = []
    for _, row in rows.iterrows():
        path = root / str(row["image_path"])
        if not path.is_file():
            raise FileNotFoundError(f"image_path {row['image_path']!r} does not exist under '{root}'")
        image = open_gray(path)
        width, height = image.size
        images.append(transform(image))
        box = box_of(row)
        if box is not None:
            sx, sy = image_size / width, image_size / height
            box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        boxes.append(box)
    if not images:
        return torch.zeros((0, 1, image_size, image_size)), []
    return torch.stack(images), boxes


def boxed_positives(rows: pd.DataFrame) -> pd.DataFrame:
    """Positive rows with a complete lesion box, offline-augmented copies left out."""
    keep = rows["label"].eq(1).fillna(False).astype(bool)
    if "augmented_from" in rows.columns:
        keep &= rows["augmented_from"].isna()
    for column in _BOX_COLUMNS:
        if column not in rows.columns:
            return rows.iloc[0:0]
        keep &= pd.to_numeric(rows[column], errors="coerce").notna()
    return rows.loc[keep]


def box_pixels(box: Box, height: int, width: int) -> tuple[slice, slice]:
    """Rows and columns whose pixel centres lie in the box (the :func:`peak_in_box` convention)."""
    x, y, w, h = box
    c0, c1 = max(0, math.ceil(x - 0.5)), min(width, math.floor(x + w - 0.5) + 1)
    r0, r1 = max(0, math.ceil(y - 0.5)), min(height, math.floor(y + h - 0.5) + 1)
    return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))

