"""Augmentation: online transforms (shape, range, determinism, geometry) and offline balancing."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from models.training.augment import (
    BALANCED_MANIFEST_NAME,
    apply_seeded,
    balance_offline,
    derive_seed,
    eval_transforms,
    read_gray,
    train_transforms,
)
from tasks.core.config import AugmentConfig
from tasks.core.schema import MANIFEST_COLUMNS
from tasks.prepare.manifest import typed_frame

OFF = AugmentConfig(flip_p=0.0, max_rotation=0.0, zoom=(1.0, 1.0), shift=0.0, brightness=0.0)


def write_manifest(
    root: Path,
    counts: dict[str, tuple[int, int]] | None = None,
    *,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """A tiny manifest with 8-bit PNGs: positives carry a bright 8 x 8 square, negatives don't.

    Args:
        root: Folder for ``manifest.parquet`` and ``slices/``.
        counts: ``{split: (n_positive, n_negative)}``; two images per patient, each patient
            in one split.
        size: PNG side.
        seed: Seed of the pixels.

    Returns:
        The manifest's path.
    """
    counts = counts or {"train": (4, 12), "validation": (3, 5), "test": (2, 4)}
    rng = np.random.default_rng(seed)
    rows = []
    for split, (n_pos, n_neg) in counts.items():
        for i, label in enumerate([1] * n_pos + [0] * n_neg):
            patient = f"{split[:2].upper()}{label}{i // 2:03d}"
            rel = f"slices/{patient}/rcc_{i:03d}.png"
            image = rng.integers(0, 90, (size, size), dtype=np.uint8)
            box = (np.nan,) * 4
            if label:
                y, x = rng.integers(2, size - 10, 2)
                image[y : y + 8, x : x + 8] = 255
                box = (float(x), float(y), 8.0, 8.0)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(root / rel)
            rows.append({
                "patient_id": patient, "study_uid": f"S-{patient}", "view": "rcc", "slice_index": i,
                "label": label, "cohort": "cancer" if label else "normal", "split": split,
                "image_path": rel, "source_path": f"dbt/{patient}.dcm", "n_frames": 40,
                "window_center": 512.0, "window_width": 600.0, "window_source": "functional-groups",
                "rotated": False, "scale": 1.0, "pad_x": 0, "pad_y": 0,
                "box_x": box[0], "box_y": box[1], "box_width": box[2], "box_height": box[3],
                "box_slice": i if label else None, "box_class": "cancer" if label else None,
                "augmented_from": None,
            })
    path = root / "manifest.parquet"
    typed_frame(rows, MANIFEST_COLUMNS).to_parquet(path, index=False)
    return path


def _marked(size: int = 48) -> torch.Tensor:
    """A dark image with one bright blob off-centre, towards the top left."""
    image = torch.zeros(1, size, size, dtype=torch.uint8)
    image[:, 8:14, 10:16] = 255
    return image


def _centroid(image: torch.Tensor) -> tuple[float, float]:
    weights = image.float().squeeze(0)
    ys, xs = torch.meshgrid(torch.arange(weights.shape[0]), torch.arange(weights.shape[1]), indexing="ij")
    total = weights.sum()
    return float((weights * ys).sum() / total), float((weights * xs).sum() / total)


# --------------------------------------------------------------------------------------
# Online
# --------------------------------------------------------------------------------------


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.squeeze(0).numpy(), mode="L")


def test_train_and_eval_transforms_give_float_images_of_the_training_size() -> None:
    image = torch.randint(0, 256, (1, 48, 48), dtype=torch.uint8)
    for transform in (train_transforms(AugmentConfig(), 32), eval_transforms(32)):
        for given in (image, _pil(image)):  # the loader passes PIL images
            out = apply_seeded(transform, given, 1)
            assert out.shape == (1, 32, 32)
            assert out.dtype == torch.float32
            assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
            assert float(out.std()) > 0.05
    # The loader's variant stops at uint8; the scaling is left to the device.
    small = apply_seeded(train_transforms(AugmentConfig(), 32, dtype=torch.uint8), _pil(image), 1)
    assert small.dtype == torch.uint8 and small.shape == (1, 32, 32)
    full = apply_seeded(train_transforms(AugmentConfig(), 32), _pil(image), 1)
    assert torch.equal(TF.to_dtype(small, torch.float32, scale=True), full)
    with pytest.raises(ValueError, match="dtype"):
        eval_transforms(32, dtype=torch.float16)
    # Without augmentation the result is exactly the resized, rescaled input.
    same = train_transforms(OFF, 48)(image)
    torch.testing.assert_close(same, image.float() / 255, rtol=0, atol=1e-6)
    torch.testing.assert_close(train_transforms(OFF, 48)(_pil(image)), same, rtol=0, atol=0)
    assert torch.equal(train_transforms(AugmentConfig(online=False), 48)(image), same)


def test_seeded_transforms_are_reproducible_and_leave_the_global_stream_alone() -> None:
    transform = train_transforms(AugmentConfig(), 32)
    image = torch.randint(0, 256, (1, 40, 40), dtype=torch.uint8)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = apply_seeded(transform, image, 7)
    assert torch.equal(torch.get_rng_state(), before)
    b = apply_seeded(transform, image, 7)
    c = apply_seeded(transform, image, 8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert derive_seed(0, "x", 1) == derive_seed(0, "x", 1) != derive_seed(0, "x", 2)


@pytest.mark.parametrize("as_pil", [False, True], ids=["tensor", "pil"])
def test_rotation_turns_the_image_about_its_centre(as_pil: bool) -> None:
    cfg = OFF.model_copy(update={"max_rotation": 90.0})
    transform = train_transforms(cfg, 48)
    image = _marked()
    cy, cx = 23.5, 23.5
    y0, x0 = _centroid(image)
    radius0, angle0 = math.hypot(y0 - cy, x0 - cx), math.degrees(math.atan2(y0 - cy, x0 - cx))
    turns = []
    for seed in range(12):
        y1, x1 = _centroid(apply_seeded(transform, _pil(image) if as_pil else image, seed))
        # A rotation about the centre keeps the blob's distance from it ...
        assert math.hypot(y1 - cy, x1 - cx) == pytest.approx(radius0, abs=1.5)
        turn = (math.degrees(math.atan2(y1 - cy, x1 - cx)) - angle0 + 180) % 360 - 180
        assert abs(turn) <= 90 + 3
        turns.append(turn)
    # ... and turns it by varying angles, both ways.
    assert max(turns) > 10 and min(turns) < -10


def test_flips_with_probability_one_mirror_both_axes() -> None:
    transform = train_transforms(OFF.model_copy(update={"flip_p": 1.0}), 48)
    image = _marked()
    assert torch.equal(transform(image), torch.flip(image, dims=[-2, -1]).float() / 255)
    assert torch.equal(transform(_pil(image)), transform(image))


def test_zoom_range_is_checked() -> None:
    with pytest.raises(ValueError, match="zoom"):
        train_transforms(AugmentConfig(zoom=(1.2, 0.8)), 32)


# --------------------------------------------------------------------------------------
# Offline balancing
# --------------------------------------------------------------------------------------


def test_balance_offline_reaches_the_ratio_inside_the_training_split(tmp_path: Path) -> None:
    manifest_path = write_manifest(tmp_path, {"train": (3, 10), "validation": (2, 6), "test": (2, 5)})
    original = pd.read_parquet(manifest_path)
    out = balance_offline(manifest_path, target_ratio=1.0, seed=0, cfg=AugmentConfig())
    assert out == tmp_path / BALANCED_MANIFEST_NAME
    balanced = pd.read_parquet(out)

    assert list(balanced.columns) == list(MANIFEST_COLUMNS)
    assert {c: str(t) for c, t in balanced.dtypes.items()} == MANIFEST_COLUMNS
    aug = balanced[balanced["augmented_from"].notna()]
    assert len(aug) == 7
    train = balanced[balanced["split"] == "train"]
    assert (train["label"] == 1).sum() == (train["label"] == 0).sum() == 10
    # Validation and test are exactly what they were.
    for split in ("validation", "test"):
        pd.testing.assert_frame_equal(
            balanced[balanced["split"] == split].reset_index(drop=True),
            original[original["split"] == split].reset_index(drop=True),
        )

    split_of_patient = dict(zip(original["patient_id"], original["split"]))
    source = original.set_index("image_path")
    train_positives = original.loc[(original["split"] == "train") & (original["label"] == 1), "image_path"]
    assert set(aug["augmented_from"]) == set(train_positives)
    # Round-robin: 7 copies over 3 sources.
    assert sorted(aug["augmented_from"].value_counts().tolist()) == [2, 2, 3]
    for _, row in aug.iterrows():
        src = source.loc[row["augmented_from"]]
        assert row["split"] == "train" == split_of_patient[row["patient_id"]]
        assert row["patient_id"] == src["patient_id"] and row["label"] == 1 and row["cohort"] == src["cohort"]
        assert row[["box_x", "box_y", "box_width", "box_height"]].isna().all()
        assert row["image_path"].startswith(row["augmented_from"].removesuffix(".png") + "_aug")
        assert Path(tmp_path / row["image_path"]).parent == Path(tmp_path / row["augmented_from"]).parent
        assert read_gray(tmp_path / row["image_path"]).shape == (1, 32, 32)
    # Each copy follows its source row.
    positions = {p: i for i, p in enumerate(balanced["image_path"])}
    for _, row in aug.iterrows():
        assert positions[row["image_path"]] > positions[row["augmented_from"]]

    half = pd.read_parquet(balance_offline(manifest_path, target_ratio=0.5, seed=0, cfg=AugmentConfig()))
    assert half["augmented_from"].notna().sum() == math.ceil(0.5 * 10) - 3


def test_balance_offline_is_deterministic_and_does_not_rewrite_pngs(tmp_path: Path) -> None:
    manifest_path = write_manifest(tmp_path, {"train": (2, 7), "validation": (1, 1)})
    out = balance_offline(manifest_path, seed=3, cfg=AugmentConfig())
    first = out.read_bytes()
    aug_files = sorted(tmp_path.rglob("*_aug*.png"))
    assert len(aug_files) == 5
    pngs = {p: p.read_bytes() for p in aug_files}
    stats = {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in aug_files}

    balance_offline(manifest_path, seed=3, cfg=AugmentConfig())
    assert out.read_bytes() == first
    assert {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in aug_files} == stats
    # Balancing the balanced manifest starts from the prepared rows again: same result.
    balance_offline(out, seed=3, cfg=AugmentConfig())
    assert out.read_bytes() == first

    # Another seed draws other copies (and rewrites them).
    balance_offline(manifest_path, seed=4, cfg=AugmentConfig())
    assert any(p.read_bytes() != data for p, data in pngs.items())


def test_balance_offline_errors_name_the_problem(tmp_path: Path) -> None:
    manifest_path = write_manifest(tmp_path, {"train": (0, 4), "validation": (1, 1)})
    with pytest.raises(ValueError, match="training split has 0 positive"):
        balance_offline(manifest_path, cfg=AugmentConfig())
    manifest_path = write_manifest(tmp_path, {"train": (2, 4), "validation": (1, 1)})
    victim = pd.read_parquet(manifest_path).query("split == 'train' and label == 1")["image_path"].iloc[0]
    (tmp_path / victim).unlink()
    with pytest.raises(FileNotFoundError, match=victim):
        balance_offline(manifest_path, cfg=AugmentConfig())
    with pytest.raises(ValueError, match="target_ratio"):
        balance_offline(manifest_path, target_ratio=1.5, cfg=AugmentConfig())
