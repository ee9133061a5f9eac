"""Augmentation: online (random flips, rotation, zoom, shift, brightness) and offline balancing.

Online augmentation is a torchvision v2 pipeline taking a gray PIL image (the loader's
path) or a ``(1, H, W)`` uint8 tensor and returning a float tensor, run in the DataLoader
workers. Randomness is explicit: torchvision's v2
transforms draw from torch's global CPU generator, so :func:`apply_seeded` runs a
transform with that generator seeded from a per-sample seed and puts the previous state
back. The training loader hands every sample its own seed, derived from
``(seed, epoch, position)`` by :func:`derive_seed`, so an augmented image does not depend
on which worker produced it, how many workers there are, or what ran before: a resumed
run sees exactly the images an uninterrupted one would.

Offline balancing (:func:`balance_offline`, the study's single-slice strategy) writes
augmented copies of training positives as PNGs next to their source slice and a
``manifest_balanced.parquet`` listing them, so the class ratio in the training split
reaches ``target_ratio``. Copies are made only from training rows, and keep their source's
patient and split, so no patient's augmented image can leak into validation or test.

Batched on-device augmentation (``affine_grid``/``grid_sample`` on whole batches) was
considered and left out: per core the loader augments ~600-850 images/s at 224 px, so a
GPU node's 8 workers outrun one GPU training VGG16; ``bench/train.py`` has the figures and,
with CUDA, measures real-data training against a batch already on the device.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from tasks.core.config import AugmentConfig
from tasks.core.files import atomic_write_bytes, atomic_write_parquet, png_bytes
from tasks.core.schema import MANIFEST_COLUMNS

__all__ = [
    "BALANCED_MANIFEST_NAME",
    "apply_seeded",
    "augment_ops",
    "balance_offline",
    "derive_seed",
    "eval_transforms",
    "open_gray",
    "read_gray",
    "train_transforms",
]

log = logging.getLogger(__name__)

#: File name of the manifest written by :func:`balance_offline`, beside its input.
BALANCED_MANIFEST_NAME = "manifest_balanced.parquet"

_BOX_GEOMETRY = ["box_x", "box_y", "box_width", "box_height"]


# --------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of values (stable across processes and Python runs).

    ``hash()`` is salted per process for strings, so seeds are derived with BLAKE2b over
    the values' ``repr`` instead.

    Args:
        parts: Values that identify one random draw, e.g. ``(seed, "train", epoch, i)``.

    Returns:
        An int in ``[0, 2**63)``, usable with ``torch.Generator.manual_seed``.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def apply_seeded(transform: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, seed: int) -> torch.Tensor:
    """Run ``transform`` with torch's global CPU generator seeded to ``seed``, then restore it.

    torchvision's v2 transforms take no generator; this makes one call reproducible without
    disturbing the caller's random stream (dropout, shuffling). Only the CPU generator is
    touched: CUDA generators are neither reseeded nor used by the transforms.

    Args:
        transform: A callable drawing from torch's global CPU generator.
        image: Its input.
        seed: The seed for this call.

    Returns:
        ``transform(image)``.
    """
    state = torch.get_rng_state()
    try:
        torch.default_generator.manual_seed(seed)
        return transform(image)
    finally:
        torch.set_rng_state(state)


# --------------------------------------------------------------------------------------
# Online transforms
# --------------------------------------------------------------------------------------


def augment_ops(cfg: AugmentConfig) -> list[v2.Transform]:
    """The random ops of the study's augmentation, for gray PIL images or ``(1, H, W)`` tensors.

    Flips (horizontal and vertical, each with ``flip_p``), then one ``RandomAffine`` holding
    the rotation (up to ``max_rotation`` degrees), the zoom and the shift, then brightness
    jitter. Rotation and affine are one op on purpose: a rotation about the centre followed
    by an isotropic scale and shift about the centre is exactly one affine map with the same
    parameter distribution, so merging them interpolates once instead of twice (sharper
    and faster). Bilinear interpolation (torchvision's default is nearest); the corners
    brought in are filled with 0, the letterbox background.

    Args:
        cfg: The augmentation settings.

    Returns:
        The ops, to put in a ``v2.Compose``; empty when every setting is off.
    """
    ops: list[v2.Transform] = []
    if cfg.flip_p > 0:
        ops += [v2.RandomHorizontalFlip(cfg.flip_p), v2.RandomVerticalFlip(cfg.flip_p)]
    if cfg.max_rotation > 0 or cfg.shift > 0 or tuple(cfg.zoom) != (1.0, 1.0):
        ops.append(
            v2.RandomAffine(
                degrees=cfg.max_rotation,
                translate=(cfg.shift, cfg.shift) if cfg.shift > 0 else None,
                scale=tuple(cfg.zoom),
                interpolation=InterpolationMode.BILINEAR,
                fill=0,
            )
        )
    if cfg.brightness > 0:
        ops.append(v2.ColorJitter(brightness=cfg.brightness))
    return ops


def _resize(image_size: int) -> v2.Resize:
    return v2.Resize((image_size, image_size), interpolation=InterpolationMode.BILINEAR, antialias=True)


def train_transforms(cfg: AugmentConfig, image_size: int, *, dtype: torch.dtype = torch.float32) -> v2.Compose:
    """Online training augmentation: a gray image -> ``(1, S, S)`` float32 in [0, 1].

    Resize to ``image_size`` first, then :func:`augment_ops`, then ``PILToTensor`` and
    ``ToDtype(float32, scale=True)``. Takes a PIL image in mode L (what the training
    loader passes: torchvision then runs PIL's C kernels, whose bilinear affine warp is
    about 1.5x faster than ``grid_sample`` on a single CPU tensor) or a ``(1, H, W)``
    uint8 / float tensor (``PILToTensor`` passes tensors through). Resizing first rather
    than last warps at the training size instead of the stored one, cheaper when the PNGs
    are larger (512 px PNGs trained at 224) and no more interpolation; when the sizes agree
    the resize is a no-op. With ``cfg.online`` off this is :func:`eval_transforms`.

    Draws from torch's global CPU generator: wrap calls in :func:`apply_seeded` for
    reproducible output.

    Args:
        cfg: Augmentation settings.
        image_size: Side of the square network input.
        dtype: ``torch.float32`` (default) or ``torch.uint8``: stop at the uint8 tensor
            (for a PIL or uint8 input) and leave the scaling to float to the consumer. The
            training loader does that: uint8 batches are a quarter of the bytes through the
            workers' shared memory and the host-to-device copy (``bench/train.py``: 1.6x
            the loader throughput on two cores), and ``torchvision``'s ``to_dtype`` on the
            device gives bit-identical floats.

    Raises:
        ValueError: A ``dtype`` other than those listed (the zoom range is checked by :class:`AugmentConfig`).
    """
    if not cfg.online:
        return eval_transforms(image_size, dtype=dtype)
    return v2.Compose([_resize(image_size), *augment_ops(cfg), *_to_tensor(dtype)])


def eval_transforms(image_size: int, *, dtype: torch.dtype = torch.float32) -> v2.Compose:
    """Validation / test preprocessing: resize to ``image_size``, then float32 in [0, 1].

    Takes a PIL image (mode L) or a ``(1, H, W)`` tensor, and ``dtype``, like
    :func:`train_transforms`.
    """
    return v2.Compose([_resize(image_size), *_to_tensor(dtype)])


def _to_tensor(dtype: torch.dtype) -> list[v2.Transform]:
    if dtype == torch.uint8:
        return [v2.PILToTensor()]
    if dtype == torch.float32:
        return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
    raise ValueError(f"dtype {dtype} is not one of the allowed dtypes [torch.float32, torch.uint8]")


def open_gray(path: str | os.PathLike[str]) -> Image.Image:
    """Read an image file as a PIL image in mode L (8-bit gray), pixels loaded."""
    with Image.open(path) as img:
        img.load()
        return img if img.mode == "L" else img.convert("L")


def read_gray(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an image file as a ``(1, H, W)`` uint8 tensor (8-bit gray, PIL mode L)."""
    array = np.asarray(open_gray(path))
    return torch.from_numpy(array.copy()).unsqueeze(0)


# --------------------------------------------------------------------------------------
# Offline balancing
# --------------------------------------------------------------------------------------


def _aug_path(image_path: str, k: int) -> str:
    stem, _, _ = image_path.rpartition(".")
    return f"{stem or image_path}_aug{k:03d}.png"


def _prepared_rows(manifest_path: Path) -> pd.DataFrame:
    """The prepared rows of a manifest (copies listed in it dropped), typed as :data:`MANIFEST_COLUMNS`."""
    if not manifest_path.is_file():
        raise FileNotFoundError(f"manifest '{manifest_path}' does not exist; run the prepare-data flow first")
    manifest = pd.read_parquet(manifest_path)
    if "source_sha256" not in manifest.columns:  # prepared before the column existed
        manifest = manifest.assign(source_sha256=pd.NA)
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(
            f"manifest '{manifest_path}' lacks the columns {missing}; rebuild it with the prepare-data flow"
        )
    # Copies listed in the input (a rerun on a balanced manifest) are dropped and redrawn:
    # balancing always starts from the prepared rows, so it gives the same result either way.
    manifest = manifest.loc[manifest["augmented_from"].isna(), list(MANIFEST_COLUMNS)]
    return manifest.astype(MANIFEST_COLUMNS).reset_index(drop=True)


def _augmented_copy(
    row: pd.Series, src: int, k: int, *, manifest_path: Path, ops: v2.Compose, seed: int,
) -> tuple[dict[str, object], bool]:
    """Copy ``k`` of source row ``src``: its manifest row, and whether its PNG was (re)written."""
    root = manifest_path.parent
    src_path = str(row["image_path"])
    rel = _aug_path(src_path, k)
    file = root / src_path
    if not file.is_file():
        raise FileNotFoundError(
            f"manifest '{manifest_path}': image_path {src_path!r} (row {src}) does not exist under '{root}'"
        )
    image = apply_seeded(ops, read_gray(file), derive_seed(seed, "offline", src_path, k))
    data = png_bytes(image.squeeze(0).numpy())
    target = root / rel
    changed = not (target.is_file() and target.read_bytes() == data)
    if changed:
        atomic_write_bytes(target, data)
    new = row.to_dict()
    new.update({"image_path": rel, "augmented_from": src_path, **{c: np.nan for c in _BOX_GEOMETRY}})
    return new, changed


def _with_copies(
    manifest: pd.DataFrame, new_rows: list[dict[str, object]], order: list[tuple[int, int]],
) -> pd.DataFrame:
    """The prepared rows with each source's copies right after it (``order``: ``(source row, k)``)."""
    if new_rows:
        added = pd.DataFrame(new_rows, columns=list(MANIFEST_COLUMNS)).astype(MANIFEST_COLUMNS)
        combined = pd.concat([manifest, added], ignore_index=True)
    else:
        combined = manifest.copy()
    keys = pd.DataFrame(order, columns=["_pos", "_k"])
    combined = combined.iloc[keys.sort_values(["_pos", "_k"], kind="stable").index].reset_index(drop=True)
    combined = combined.astype(MANIFEST_COLUMNS)
    return combined


def balance_offline(
    manifest_path: str | os.PathLike[str],
    *,
    target_ratio: float = 1.0,
    seed: int = 0,
    cfg: AugmentConfig | None = None,
) -> Path:
    """Write augmented copies of training positives until positives / negatives reaches a ratio.

    (Over 80 lines only by its docstring: the body is about 40.)

    The study's single-slice strategy has few positive slices; this balances the training
    split offline. Copies are made round-robin over the source rows (training positives
    that are not themselves augmented), in manifest order, so every source gets either
    ``n`` or ``n + 1`` copies. Copy ``k`` of a source is ``<source stem>_aug<k:03d>.png``
    beside it, drawn with :func:`augment_ops` from a seed derived from ``(seed, source
    image_path, k)``: raising the ratio later adds copies without changing existing ones.

    The new manifest, ``manifest_balanced.parquet`` beside the input, holds every input row
    and, after each source row, its copies: same columns and dtypes, the source's ids,
    label, cohort, split and lineage, ``augmented_from`` = the source's ``image_path``, and
    NaN box geometry (``box_x``, ``box_y``, ``box_width``, ``box_height``), since the copy
    is flipped, rotated and shifted; ``box_slice`` and ``box_class`` are kept. Copies exist
    only in the training split, so validation and test are untouched.

    Reruns with the same inputs write identical bytes and leave PNGs whose content is
    already right alone. Every write is atomic.

    Args:
        manifest_path: ``manifest.parquet`` from the prepare flow; image paths are relative
            to its folder.
        target_ratio: Positives per negative wanted in the training split, in (0, 1].
        seed: Seed for the augmentation draws.
        cfg: Augmentation settings (flip, rotation, zoom, shift, brightness); ``online`` and
            ``offline_balance`` are not consulted (the caller decided to balance). Default:
            ``AugmentConfig()``.

    Returns:
        The path of ``manifest_balanced.parquet``.

    Raises:
        FileNotFoundError: The manifest, or a source PNG (named by its ``image_path``), is
            missing.
        ValueError: Bad ``target_ratio``, missing manifest columns, or no training positive
            or negative to balance.
    """
    manifest_path = Path(manifest_path)
    cfg = cfg or AugmentConfig()
    AugmentConfig.model_validate({"target_ratio": target_ratio})  # the bounds are the config field's
    manifest = _prepared_rows(manifest_path)
    root = manifest_path.parent
    ops = v2.Compose(augment_ops(cfg))

    train = manifest["split"].eq("train").fillna(False).astype(bool)
    positive = manifest["label"].eq(1).fillna(False).astype(bool)
    n_pos = int((train & positive).sum())
    n_neg = int((train & ~positive).sum())
    sources = manifest.index[train & positive].tolist()
    if n_neg == 0 or not sources:
        raise ValueError(
            f"manifest '{manifest_path}': the training split has {n_pos} positive and {n_neg} negative "
            "rows; offline balancing needs at least one of each"
        )
    wanted = math.ceil(target_ratio * n_neg - 1e-9)
    n_new = max(0, wanted - n_pos)

    new_rows: list[dict[str, object]] = []
    order: list[tuple[int, int]] = [(pos, 0) for pos in range(len(manifest))]
    written = kept = 0
    for j in range(n_new):
        src = sources[j % len(sources)]
        k = j // len(sources) + 1
        new, changed = _augmented_copy(manifest.loc[src], src, k, manifest_path=manifest_path, ops=ops, seed=seed)
        written, kept = written + changed, kept + (not changed)
        new_rows.append(new)
        order.append((src, k))

    combined = _with_copies(manifest, new_rows, order)

    out = root / BALANCED_MANIFEST_NAME
    atomic_write_parquet(out, combined)
    log.info(
        "offline balancing of '%s': %d training positives, %d negatives, target ratio %.3g -> %d copies "
        "(%d PNGs written, %d already up to date); wrote '%s'",
        manifest_path, n_pos, n_neg, target_ratio, n_new, written, kept, out,
    )
    return out
