"""Grad-CAM heat maps: where in a slice the classifier found its evidence of tumour.

Grad-CAM (Selvaraju et al., 2017) weights the feature maps of a late convolutional layer
by the spatially averaged gradient of the tumour logit with respect to them, sums over
channels and keeps the positive part. Here it is captum's
:class:`~captum.attr.LayerGradCam` on the backbone's last convolutional layer (VGG16: the
last ``Conv2d`` of ``features``, a 1/16-resolution map; Inception v3: ``Mixed_7c``, 1/32),
upsampled bilinearly to the input size with :meth:`captum.attr.LayerAttribution.interpolate`
and divided by its maximum, so each map lies in [0, 1].

:func:`box_hit_fraction` is the localisation check: over the positive slices with a lesion
box, the fraction whose heat-map peak falls inside the box. :func:`gradcam_examples`
picks true positives, false positives and false negatives for the report.
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
from captum.attr import LayerAttribution, LayerGradCam
from torch import Tensor, nn

from tasks.augment import eval_transforms, open_gray

__all__ = [
    "Box",
    "box_hit_fraction",
    "box_of",
    "gradcam",
    "gradcam_examples",
    "load_inputs",
    "peak_in_box",
    "target_layer",
]

#: A lesion box ``(x, y, width, height)`` in pixels of the image it belongs to.
Box = tuple[float, float, float, float]

_BOX_COLUMNS = ("box_x", "box_y", "box_width", "box_height")


def target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM reads: the backbone's last convolutional layer.

    Inception v3 (a module with ``Mixed_7c``): ``Mixed_7c``. VGG16 (a module with
    ``features``): the last ``Conv2d`` in ``features``. Any other network: its last
    ``Conv2d`` in registration order.

    Raises:
        ValueError: The model has no convolutional layer.
    """
    backbone = getattr(model, "backbone", model)
    if isinstance(getattr(backbone, "Mixed_7c", None), nn.Module):
        return backbone.Mixed_7c
    features = getattr(backbone, "features", None)
    scope = features if isinstance(features, nn.Module) else model
    convs = [m for m in scope.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM; pass layer= explicitly")
    return convs[-1]


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def gradcam(
    model: nn.Module,
    images: Tensor,
    *,
    layer: nn.Module | None = None,
    batch_size: int = 16,
) -> Tensor:
    """Grad-CAM maps of the tumour logit for a batch of images.

    The model runs in eval mode (its mode is restored afterwards); gradients are taken with
    ``torch.autograd.grad``, so no parameter's ``.grad`` is touched, and it works with a
    frozen backbone and inside ``torch.inference_mode``.

    Args:
        model: A classifier mapping ``(B, 1, H, W)`` images to logits ``(B,)``.
        images: ``(B, 1, H, W)`` float images in [0, 1] (the model's input).
        layer: Layer to explain; default :func:`target_layer`.
        batch_size: Images per backward pass.

    Returns:
        ``(B, H, W)`` float32 maps on the CPU, each in [0, 1] (divided by its maximum; all
        zeros where no location speaks for tumour).

    Raises:
        ValueError: ``images`` isn't a ``(B, C, H, W)`` float tensor.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (B, 1, H, W), got {images.dtype} {tuple(images.shape)}")
    layer = target_layer(model) if layer is None else layer
    height, width = images.shape[-2:]
    device = _device_of(model)
    was_training = model.training
    model.eval()
    maps: list[Tensor] = []
    try:
        with torch.inference_mode(False), torch.enable_grad():
            explainer = LayerGradCam(model, layer)
            for start in range(0, images.shape[0], batch_size):
                x = images[start : start + batch_size].to(device=device, dtype=torch.float32).clone()
                # The input needs a gradient path even when every layer before ``layer`` is frozen.
                x.requires_grad_(True)
                coarse = explainer.attribute(x, target=None, relu_attributions=True)
                fine = LayerAttribution.interpolate(coarse.detach(), (height, width), interpolate_mode="bilinear")
                fine = fine[:, 0].float().clamp_min(0.0)
                peak = fine.amax(dim=(1, 2), keepdim=True)
                maps.append(torch.where(peak > 0, fine / peak.clamp_min(1e-30), torch.zeros_like(fine)).cpu())
    finally:
        model.train(was_training)
    if not maps:
        return torch.zeros((0, height, width), dtype=torch.float32)
    return torch.cat(maps)


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
    ``image_size`` x ``image_size`` (:func:`~tasks.augment.eval_transforms`), so each box
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


def _boxed_positives(rows: pd.DataFrame) -> pd.DataFrame:
    keep = rows["label"].eq(1).fillna(False).astype(bool)
    if "augmented_from" in rows.columns:
        keep &= rows["augmented_from"].isna()
    for column in _BOX_COLUMNS:
        if column not in rows.columns:
            return rows.iloc[0:0]
        keep &= pd.to_numeric(rows[column], errors="coerce").notna()
    return rows.loc[keep]


def box_hit_fraction(
    model: nn.Module,
    manifest_rows: pd.DataFrame,
    root: str | os.PathLike[str],
    image_size: int,
    *,
    batch_size: int = 16,
    layer: nn.Module | None = None,
) -> dict[str, Any]:
    """Fraction of boxed positive slices whose Grad-CAM peak lies inside the lesion box.

    Args:
        model: The classifier (moved to nothing: inputs go to its device).
        manifest_rows: Manifest or prediction rows with ``label``, ``image_path`` and the
            box columns; only positives with a complete box (and not offline-augmented
            copies) are used.
        root: Folder the ``image_path`` values are relative to.
        image_size: The network input side.
        batch_size: Images per Grad-CAM pass.
        layer: Layer to explain; default :func:`target_layer`.

    Returns:
        ``fraction`` (``None`` when no slice qualifies, with ``reason``), ``n`` (slices
        checked), ``hits``, ``n_no_signal`` (maps with no positive value, counted as misses).
    """
    rows = _boxed_positives(manifest_rows)
    if rows.empty:
        return {"fraction": None, "n": 0, "hits": 0, "n_no_signal": 0,
                "reason": "no positive slice with a lesion box in these rows"}
    hits = flat = 0
    for start in range(0, len(rows), batch_size):
        images, boxes = load_inputs(rows.iloc[start : start + batch_size], root, image_size)
        maps = gradcam(model, images, layer=layer, batch_size=batch_size)
        for heat, box in zip(maps, boxes):
            if float(heat.max()) <= 0:
                flat += 1
            elif box is not None and peak_in_box(heat, box):
                hits += 1
    return {"fraction": hits / len(rows), "n": int(len(rows)), "hits": int(hits), "n_no_signal": int(flat)}


def _kind_masks(pred: pd.DataFrame, threshold: float) -> dict[str, pd.Series]:
    called = pred["probability"].ge(threshold)
    positive = pred["label"].eq(1)
    return {"TP": positive & called, "FP": ~positive & called, "FN": positive & ~called}


def gradcam_examples(
    model: nn.Module,
    predictions: pd.DataFrame,
    *,
    root: str | os.PathLike[str],
    image_size: int,
    threshold: float = 0.5,
    per_kind: int = 3,
    seed: int = 0,
    layer: nn.Module | None = None,
) -> list[dict[str, Any]]:
    """Grad-CAM examples of true positives, false positives and false negatives.

    Up to ``per_kind`` slices of each kind are drawn at random (``numpy`` generator seeded
    with ``(seed, kind)``); true positives and false negatives are drawn from the slices
    with a lesion box when there are any, so the box can be drawn over the map.

    Args:
        model: The classifier.
        predictions: Slice predictions (:func:`models.predict.predict`).
        root: Folder the ``image_path`` values are relative to.
        image_size: The network input side.
        threshold: Decision threshold that defines the kinds.
        per_kind: Examples per kind.
        seed: Seed of the draw.
        layer: Layer to explain; default :func:`target_layer`.

    Returns:
        Dicts in the order TP, FP, FN (within a kind, by descending probability) with
        ``kind``, ``probability``, ``label``, ``cohort``, ``ids`` (``patient_id``,
        ``study_uid``, ``view``, ``slice_index``), ``image`` (``(S, S)`` uint8, the
        network input), ``heatmap`` (``(S, S)`` float32 in [0, 1]), ``box``
        (``(x, y, w, h)`` at the input size, or ``None``) and ``peak_in_box`` (``None``
        without a box): what :func:`tasks.report.write_report` takes.
    """
    if per_kind <= 0 or predictions.empty:
        return []
    chosen: list[tuple[str, pd.DataFrame]] = []
    for k, (kind, mask) in enumerate(_kind_masks(predictions, threshold).items()):
        candidates = predictions.loc[mask.fillna(False).astype(bool)]
        if kind != "FP":
            boxed = candidates.loc[[box_of(r) is not None for _, r in candidates.iterrows()]]
            if not boxed.empty:
                candidates = boxed
        if candidates.empty:
            continue
        rng = np.random.default_rng([int(seed), k])
        picks = np.sort(rng.choice(len(candidates), size=min(per_kind, len(candidates)), replace=False))
        rows = candidates.iloc[picks].sort_values("probability", ascending=False, kind="stable")
        chosen.append((kind, rows))
    examples: list[dict[str, Any]] = []
    for kind, rows in chosen:
        images, boxes = load_inputs(rows, root, image_size)
        maps = gradcam(model, images, layer=layer)
        for (_, row), image, heat, box in zip(rows.iterrows(), images, maps, boxes):
            examples.append({
                "kind": kind,
                "probability": float(row["probability"]),
                "label": int(row["label"]),
                "cohort": None if "cohort" not in row or pd.isna(row["cohort"]) else str(row["cohort"]),
                "ids": {
                    "patient_id": str(row["patient_id"]),
                    "study_uid": str(row["study_uid"]),
                    "view": str(row["view"]),
                    "slice_index": int(row["slice_index"]),
                },
                "image": (image[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy(),
                "heatmap": heat.numpy().astype(np.float32),
                "box": box,
                "peak_in_box": None if box is None else peak_in_box(heat, box),
            })
    return examples
