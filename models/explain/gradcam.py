"""Grad-CAM heat maps: where in a slice the classifier found its evidence of tumour.

Grad-CAM (Selvaraju et al., 2017) weights the feature maps of a late convolutional layer
by the spatially averaged gradient of the tumour logit with respect to them, sums over
channels and keeps the positive part. Here it is captum's
:class:`~captum.attr.LayerGradCam` on the backbone's last convolutional layer (VGG16: the
last ``Conv2d`` of ``features``, a 1/16-resolution map; Inception v3: ``Mixed_7c``, 1/32),
upsampled bilinearly to the input size with :meth:`captum.attr.LayerAttribution.interpolate`
and divided by its maximum, so each map lies in [0, 1].

:func:`box_hit_fraction` is the localisation check: over the positive slices with a lesion
box, the fraction whose heat-map peak falls inside the box. It only means something when the
map is fine enough to tell the box from its surroundings: at 64 px VGG16's last map is
4 x 4 and at 128 px Inception v3's is 2 x 2, where one map cell covers a quarter of the
image. :func:`localisation_layer` therefore reads the last layer whose map is at least
:data:`MIN_MAP_SIDE` on each side, and says that localisation is not measurable where no
layer is; every result carries the map's resolution.

:func:`gradcam_examples` picks true positives, false positives and false negatives for
the report. The lesion boxes and the inputs they belong to are in :mod:`models.explain.boxes`; the
occlusion check, which does not depend on how fine a map is, in :mod:`models.explain.occlusion`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import Tensor, nn

from models.explain.boxes import box_of, boxed_positives, device_of, load_inputs, peak_in_box

__all__ = [
    "MIN_MAP_SIDE",
    "box_hit_fraction",
    "gradcam",
    "gradcam_examples",
    "localisation_layer",
    "map_resolutions",
    "target_layer",
]

#: The coarsest Grad-CAM map that can localise a lesion: 8 x 8 cells.
MIN_MAP_SIDE = 8

#: Inception v3's blocks, input to output: the candidates for a finer Grad-CAM layer.
_INCEPTION_BLOCKS = ("Conv2d_4a_3x3", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                     "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")

#: ResNet's stages, input to output (each ends with its residual sum and ReLU).
_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM reads: the backbone's last convolutional layer.

    Inception v3 (a module with ``Mixed_7c``): ``Mixed_7c``. ResNet (a module with
    ``layer4``): ``layer4``, the last stage's output after its residual sum. VGG16 (a module
    with ``features``): the last ``Conv2d`` in ``features``. Any other network: its last
    ``Conv2d`` in registration order.

    Raises:
        ValueError: The model has no convolutional layer.
    """
    backbone = getattr(model, "backbone", model)
    if isinstance(getattr(backbone, "Mixed_7c", None), nn.Module):
        return backbone.Mixed_7c
    if isinstance(getattr(backbone, "layer4", None), nn.Module):
        return backbone.layer4
    features = getattr(backbone, "features", None)
    scope = features if isinstance(features, nn.Module) else model
    convs = [m for m in scope.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM; pass layer= explicitly")
    return convs[-1]


def _candidate_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Layers Grad-CAM may read, input to output, named as in ``model.named_modules()``."""
    backbone = getattr(model, "backbone", model)
    prefix = "backbone." if backbone is not model else ""
    if isinstance(getattr(backbone, "Mixed_7c", None), nn.Module):
        return [(prefix + n, getattr(backbone, n)) for n in _INCEPTION_BLOCKS if hasattr(backbone, n)]
    if isinstance(getattr(backbone, "layer4", None), nn.Module):
        return [(prefix + n, getattr(backbone, n)) for n in _RESNET_STAGES]
    features = getattr(backbone, "features", None)
    if isinstance(features, nn.Module):
        scope, prefix = features, prefix + "features."
    else:
        scope, prefix = model, ""
    return [(prefix + n, m) for n, m in scope.named_modules() if isinstance(m, nn.Conv2d)]


def map_resolutions(model: nn.Module, image_size: int, layers: Sequence[nn.Module]) -> list[tuple[int, int]]:
    """The ``(height, width)`` of each layer's output for an ``image_size`` square input (one forward pass)."""
    sizes: dict[int, tuple[int, int]] = {}

    def record(module: nn.Module, _inputs: Any, output: Tensor) -> None:
        # Returns None: a forward hook that returns a value would replace the layer's output.
        sizes.setdefault(id(module), tuple(output.shape[-2:]))

    hooks = [layer.register_forward_hook(record) for layer in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, image_size, image_size, device=device_of(model)))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return [tuple(int(v) for v in sizes.get(id(layer), (0, 0))) for layer in layers]  # type: ignore[misc]


def localisation_layer(model: nn.Module, image_size: int, *, min_side: int = MIN_MAP_SIDE) -> dict[str, Any]:
    """The layer to explain at this input size, and whether localisation is measurable.

    The default is :func:`target_layer`. Where its map is coarser than ``min_side`` x
    ``min_side`` (VGG16 at 64 px: 4 x 4; Inception v3 at 128 px: 2 x 2), the last earlier
    candidate layer (VGG16: a ``Conv2d`` of ``features``; Inception v3: a ``Mixed_*``
    block) whose map is at least that fine is used instead. Where no layer is, the
    default stays and ``measurable`` is False.

    Returns:
        ``layer`` (the module), ``name``, ``map_resolution`` (``[h, w]`` of the chosen
        layer), ``target_layer`` and ``target_resolution`` (the default's name and
        ``[h, w]``), ``measurable`` (bool) and ``note`` (what was done and why, or ``None``).
    """
    default = target_layer(model)
    candidates = _candidate_layers(model)
    if not any(m is default for _, m in candidates):
        candidates.append((type(default).__name__, default))
    resolutions = map_resolutions(model, image_size, [m for _, m in candidates])
    default_name, default_res = next((n, r) for (n, m), r in zip(candidates, resolutions) if m is default)
    out: dict[str, Any] = {"layer": default, "name": default_name, "map_resolution": list(default_res),
                           "target_layer": default_name, "target_resolution": list(default_res),
                           "measurable": True, "note": None}
    if min(default_res) >= min_side:
        return out
    position = next(i for i, (_, m) in enumerate(candidates) if m is default)
    finer = [i for i in range(position) if min(resolutions[i]) >= min_side]
    coarse = f"{default_res[0]} x {default_res[1]}"
    if not finer:
        out["measurable"] = False
        out["note"] = (f"localisation is not measurable at this size: at {image_size} px the last layer's Grad-CAM "
                       f"map ({default_name}) is {coarse} and no layer's map reaches {min_side} x {min_side}")
        return out
    i = finer[-1]
    out.update(layer=candidates[i][1], name=candidates[i][0], map_resolution=list(resolutions[i]))
    out["note"] = (f"at {image_size} px the last layer's map ({default_name}) is only {coarse}, too coarse to "
                   f"localise a lesion; Grad-CAM reads {candidates[i][0]} "
                   f"({resolutions[i][0]} x {resolutions[i][1]}) instead")
    return out


def _layer_choice(model: nn.Module, image_size: int, layer: nn.Module | None) -> dict[str, Any]:
    if layer is None:
        return localisation_layer(model, image_size)
    (res,) = map_resolutions(model, image_size, [layer])
    name = next((n for n, m in model.named_modules() if m is layer), type(layer).__name__)
    return {"layer": layer, "name": name, "map_resolution": list(res), "target_layer": name,
            "target_resolution": list(res), "measurable": True, "note": None}


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
    device = device_of(model)
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
        ``fraction`` (``None`` when no slice qualifies or localisation is not measurable at
        this size, with ``reason``), ``n`` (slices checked), ``hits``, ``n_no_signal``
        (maps with no positive value, counted as misses), and the map's ``layer``,
        ``map_resolution`` (``[h, w]``), ``target_layer``, ``target_resolution`` and
        ``note`` (see :func:`localisation_layer`; ``layer=None`` chooses).
    """
    rows = boxed_positives(manifest_rows)
    choice = _layer_choice(model, image_size, layer)
    layer = choice["layer"]
    described = {k: choice[k] for k in ("map_resolution", "target_layer", "target_resolution", "note")}
    described["layer"] = choice["name"]
    if rows.empty:
        return {"fraction": None, "n": 0, "hits": 0, "n_no_signal": 0,
                "reason": "no positive slice with a lesion box in these rows", **described}
    if not choice["measurable"]:
        return {"fraction": None, "n": 0, "hits": 0, "n_no_signal": 0, "reason": choice["note"], **described}
    hits = flat = 0
    for start in range(0, len(rows), batch_size):
        images, boxes = load_inputs(rows.iloc[start : start + batch_size], root, image_size)
        maps = gradcam(model, images, layer=layer, batch_size=batch_size)
        for heat, box in zip(maps, boxes):
            if float(heat.max()) <= 0:
                flat += 1
            elif box is not None and peak_in_box(heat, box):
                hits += 1
    return {"fraction": hits / len(rows), "n": int(len(rows)), "hits": int(hits), "n_no_signal": int(flat),
            **described}


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
        predictions: Slice predictions (:func:`models.inference.predict.predict`).
        root: Folder the ``image_path`` values are relative to.
        image_size: The network input side.
        threshold: Decision threshold that defines the kinds.
        per_kind: Examples per kind.
        seed: Seed of the draw.
        layer: Layer to explain; default :func:`localisation_layer`'s choice.

    Returns:
        Dicts in the order TP, FP, FN (within a kind, by descending probability) with
        ``kind``, ``probability``, ``label``, ``cohort``, ``ids`` (``patient_id``,
        ``study_uid``, ``view``, ``slice_index``), ``image`` (``(S, S)`` uint8, the
        network input), ``heatmap`` (``(S, S)`` float32 in [0, 1]), ``box``
        (``(x, y, w, h)`` at the input size, or ``None``) and ``peak_in_box`` (``None``
        without a box), ``map_resolution`` (``[h, w]`` of the explained layer's map) and
        ``layer`` (its name): what :func:`tasks.evaluate.report.write_report` takes.
    """
    if per_kind <= 0 or predictions.empty:
        return []
    choice = _layer_choice(model, image_size, layer)
    layer = choice["layer"]
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
                "map_resolution": choice["map_resolution"],
                "layer": choice["name"],
            })
    return examples

