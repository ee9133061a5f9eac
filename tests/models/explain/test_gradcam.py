"""Grad-CAM: a planted model must be explained where it looks; peaks, boxes and scaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from models.nets.classifier import build_model
from models.explain.boxes import box_of, peak_in_box
from models.explain.gradcam import box_hit_fraction, gradcam, gradcam_examples, localisation_layer, target_layer
from models.explain.occlusion import hide_boxes, occlusion_check

SIZE = 32
REGION = 16  # the planted model only sees input rows and columns [0, 16)


class Planted(nn.Module):
    """A CNN whose logit depends only on the top-left quadrant of the input.

    conv (positive weights, so features follow brightness) -> ReLU -> 2x2 max-pool ->
    mask keeping the top-left 8 x 8 of the 16 x 16 pooled map -> last conv -> mean. The
    last conv's map is 1/2 of the input size, so Grad-CAM's upsampling is exercised.
    """

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1, bias=False),
        )
        with torch.no_grad():
            for conv in (self.features[0], self.features[3]):
                conv.weight.copy_(torch.rand(conv.weight.shape, generator=g) * 0.9 + 0.1)
        mask = torch.zeros(1, 1, SIZE // 2, SIZE // 2)
        mask[..., : REGION // 2, : REGION // 2] = 1
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features[2](self.features[1](self.features[0](x))) * self.mask
        return self.features[3](pooled).mean(dim=(1, 2, 3)) - 0.2


def textured(seed: int, *, blob: tuple[int, int] | None = (26, 26)) -> torch.Tensor:
    """Gray texture with a much brighter blob (default: bottom-right, outside the region)."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.1, 0.5, (SIZE, SIZE)).astype(np.float32)
    if blob is not None:
        r, c = blob
        image[r - 2 : r + 3, c - 2 : c + 3] = 1.0
    return torch.from_numpy(image)[None]


def test_planted_model_is_explained_inside_the_region_it_reads() -> None:
    model = Planted().eval()
    images = torch.stack([textured(s) for s in range(4)])
    maps = gradcam(model, images)
    assert maps.shape == (4, SIZE, SIZE) and maps.dtype == torch.float32
    assert float(maps.min()) >= 0.0 and float(maps.max()) == pytest.approx(1.0)
    for image, heat in zip(images, maps):
        # The image's brightest spot is outside the region; the model never sees it.
        r_img, c_img = np.unravel_index(int(image[0].argmax()), (SIZE, SIZE))
        assert r_img >= REGION and c_img >= REGION
        assert peak_in_box(heat, (0, 0, REGION, REGION))
        outside = heat.clone()
        # The last conv's 3 x 3 kernel reaches one pooled pixel (2 input pixels) past the
        # mask, and bilinear upsampling spreads that by one more.
        outside[: REGION + 3, : REGION + 3] = 0
        assert float(outside.max()) == 0.0


def test_planted_model_peak_follows_a_lesion_inside_the_region() -> None:
    model = Planted().eval()
    heat = gradcam(model, textured(0, blob=(6, 9))[None])[0]
    assert peak_in_box(heat, (5, 3, 8, 7))  # around the blob at row 6, column 9
    assert not peak_in_box(heat, (0, 10, 6, 6))


def test_peak_in_box_by_hand() -> None:
    heat = np.zeros((10, 12))
    heat[5, 7] = 1.0
    assert peak_in_box(heat, (7, 5, 1, 1))
    assert peak_in_box(heat, {"x": 6, "y": 4, "width": 3, "height": 3})
    assert peak_in_box(heat, pd.Series({"box_x": 6.6, "box_y": 4.6, "box_width": 1.0, "box_height": 1.0}))
    assert not peak_in_box(heat, (0, 0, 7, 5))  # columns 0..6, rows 0..4
    assert not peak_in_box(heat, (8, 5, 2, 2))
    assert not peak_in_box(np.zeros((4, 4)), (0, 0, 4, 4))  # no evidence anywhere: no peak
    with pytest.raises(ValueError, match="not a valid"):
        peak_in_box(heat, (0, 0, float("nan"), 1))
    with pytest.raises(ValueError, match="2-D"):
        peak_in_box(np.zeros((1, 4, 4)), (0, 0, 1, 1))
    assert box_of({"box_x": 1, "box_y": 2, "box_width": np.nan, "box_height": 3}) is None


def test_tumor_classifier_vgg16_targets_last_conv_and_restores_mode() -> None:
    model = build_model(model="vgg16", weights=None, image_size=SIZE, seed=0)
    layer = target_layer(model)
    assert layer is [m for m in model.backbone.features if isinstance(m, nn.Conv2d)][-1]
    assert layer is model.backbone.features[28]
    model.set_backbone_trainable(False)
    assert model.training
    images = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        maps = gradcam(model, images)
    assert maps.shape == (2, SIZE, SIZE)
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1
    assert model.training  # put back as found
    assert all(p.grad is None for p in model.parameters())


def test_inception_targets_mixed_7c() -> None:
    model = build_model(model="inception_v3", weights=None, image_size=75, seed=0)
    assert target_layer(model) is model.backbone.Mixed_7c


def test_resnet18_targets_layer4_and_falls_back_to_a_finer_stage() -> None:
    model = build_model(model="resnet18", weights=None, image_size=64, seed=0)
    assert target_layer(model) is model.backbone.layer4
    # 64 px: layer4 is 2 x 2, layer3 4 x 4, layer2 8 x 8: the last stage fine enough for a lesion.
    chosen = localisation_layer(model, 64)
    assert chosen["target_layer"] == "backbone.layer4" and chosen["target_resolution"] == [2, 2]
    assert chosen["layer"] is model.backbone.layer2 and chosen["map_resolution"] == [8, 8]
    images = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    maps = gradcam(model, images, layer=chosen["layer"])
    assert maps.shape == (2, 64, 64) and float(maps.max()) <= 1


def _png_rows(root: Path) -> pd.DataFrame:
    """48 px PNGs, network input 32 px: the boxes must be scaled by 2/3."""
    rows = []
    specs = [
        # Bright spot at PNG rows/cols 15..17 -> input ~10..11.5, inside the region.
        ("hit", 1, (15, 15), (13.0, 13.0, 8.0, 8.0)),  # scaled: 8.7..14 (hit); unscaled 13..21 (miss)
        ("miss", 1, (15, 15), (30.0, 30.0, 10.0, 10.0)),
        ("negative", 0, (15, 15), (13.0, 13.0, 8.0, 8.0)),  # negatives are not checked
        ("nobox", 1, (15, 15), (np.nan,) * 4),
    ]
    rng = np.random.default_rng(0)
    for name, label, (r, c), box in specs:
        image = rng.integers(25, 125, (48, 48)).astype(np.uint8)
        image[r : r + 3, c : c + 3] = 255
        rel = f"{name}.png"
        Image.fromarray(image, mode="L").save(root / rel)
        rows.append({"patient_id": f"DBT-P{len(rows):05d}", "study_uid": "DBT-S00001", "view": "lcc",
                     "slice_index": len(rows), "label": label, "probability": 0.9 if label else 0.7,
                     "cohort": "cancer" if label else "normal", "image_path": rel,
                     "box_x": box[0], "box_y": box[1], "box_width": box[2], "box_height": box[3]})
    return pd.DataFrame(rows)


def test_box_hit_fraction_scales_boxes_to_the_input(tmp_path: Path) -> None:
    rows = _png_rows(tmp_path)
    out = box_hit_fraction(Planted(), rows, tmp_path, SIZE)
    assert {k: out[k] for k in ("fraction", "n", "hits", "n_no_signal")} == {
        "fraction": 0.5, "n": 2, "hits": 1, "n_no_signal": 0}
    # The planted model's last conv map is 16 x 16 at 32 px: fine enough, so it is the one read.
    assert out["layer"] == out["target_layer"] == "features.3"
    assert out["map_resolution"] == [16, 16] and out["note"] is None
    none = box_hit_fraction(Planted(), rows[rows["label"] == 0], tmp_path, SIZE)
    assert none["fraction"] is None and none["n"] == 0 and "no positive slice" in none["reason"]


def test_gradcam_examples_kinds_and_contents(tmp_path: Path) -> None:
    rows = _png_rows(tmp_path)
    rows.loc[rows["image_path"] == "miss.png", "probability"] = 0.1  # a false negative
    examples = gradcam_examples(Planted(), rows, root=tmp_path, image_size=SIZE, threshold=0.5, per_kind=2)
    assert [e["kind"] for e in examples] == ["TP", "FP", "FN"]
    tp, fp, fn = examples
    assert tp["ids"]["patient_id"] == "DBT-P00000"  # the boxed TP wins over the unboxed one
    assert tp["image"].dtype == np.uint8 and tp["image"].shape == (SIZE, SIZE)
    assert tp["heatmap"].shape == (SIZE, SIZE) and 0 <= tp["heatmap"].min() <= tp["heatmap"].max() <= 1
    assert tp["box"] == pytest.approx((13 * 2 / 3, 13 * 2 / 3, 8 * 2 / 3, 8 * 2 / 3))
    assert tp["peak_in_box"] is True and fn["peak_in_box"] is False
    assert fp["label"] == 0 and fp["probability"] == pytest.approx(0.7)
    assert set(tp["ids"]) == {"patient_id", "study_uid", "view", "slice_index"}
    assert tp["map_resolution"] == [16, 16]


def test_coarse_last_map_falls_back_to_an_earlier_layer() -> None:
    model = build_model(model="vgg16", weights=None, image_size=64, seed=0)
    choice = localisation_layer(model, 64)
    # VGG16 at 64 px: the last conv's map is 4 x 4; conv4_3 (features[21]) is 8 x 8.
    assert choice["target_resolution"] == [4, 4]
    assert choice["layer"] is model.backbone.features[21] and choice["map_resolution"] == [8, 8]
    assert choice["measurable"] and "4 x 4" in choice["note"]
    maps = gradcam(model, torch.rand(1, 1, 64, 64), layer=choice["layer"])
    assert maps.shape == (1, 64, 64)
    never = localisation_layer(model, 64, min_side=128)
    assert not never["measurable"] and "not measurable" in never["note"]
    assert never["layer"] is target_layer(model)


BOX = (8.0, 8.0, 8.0, 8.0)  # input pixels: rows and columns 8..15


class ReadsBox(nn.Module):
    """Tumour score = brightness of the box region only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20.0 * (x[:, 0, 8:16, 8:16].mean(dim=(1, 2)) - 0.6)


class IgnoresBox(nn.Module):
    """Tumour score from the bottom-right corner, far from the box: always called tumour."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20.0 * (x[:, 0, 24:, 24:].mean(dim=(1, 2)) + 0.1)


def _lesion_rows(root: Path, n: int = 4) -> pd.DataFrame:
    """32 px PNGs (no scaling) of tissue texture with a bright lesion filling BOX; one normal image."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n + 1):
        image = rng.integers(50, 110, (SIZE, SIZE)).astype(np.uint8)
        label = int(i < n)
        if label:
            image[8:16, 8:16] = 250
        Image.fromarray(image, mode="L").save(root / f"{i}.png")
        rows.append({"patient_id": f"P{i}", "label": label, "image_path": f"{i}.png",
                     "box_x": BOX[0] if label else np.nan, "box_y": BOX[1] if label else np.nan,
                     "box_width": BOX[2] if label else np.nan, "box_height": BOX[3] if label else np.nan})
    return pd.DataFrame(rows)


def test_hide_boxes_fills_with_the_surrounding_median() -> None:
    image = torch.full((1, 1, SIZE, SIZE), 0.3)
    image[..., 8:16, 8:16] = 1.0
    image[..., 28:, :] = 0.0  # air / padding far away is not tissue
    hidden = hide_boxes(image, [BOX])
    assert torch.allclose(hidden[..., 8:16, 8:16], torch.tensor(0.3))
    assert torch.equal(hidden[..., :8, :], image[..., :8, :])  # nothing outside the box changes
    assert torch.equal(hide_boxes(image, [None]), image)


def test_occlusion_flips_a_model_that_reads_the_box_and_not_one_that_ignores_it(tmp_path: Path) -> None:
    rows = _lesion_rows(tmp_path)
    reads = occlusion_check(ReadsBox(), rows, tmp_path, SIZE)
    assert reads["n"] == 4 and reads["n_called_positive"] == 4  # the normal image is not checked
    assert reads["flip_fraction"] == 1.0 and reads["flips"] == 4
    assert reads["mean_drop"] > 0.9
    ignores = occlusion_check(IgnoresBox(), rows, tmp_path, SIZE)
    assert ignores["n_called_positive"] == 4
    assert ignores["flip_fraction"] == 0.0 and ignores["mean_drop"] == pytest.approx(0.0, abs=1e-12)
    none = occlusion_check(ReadsBox(), rows[rows["label"] == 0], tmp_path, SIZE)
    assert none["flip_fraction"] is None and "no positive image" in none["reason"]
