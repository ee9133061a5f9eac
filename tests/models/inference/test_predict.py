"""Inference over a manifest split: columns, rows, order, augmented copies left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from models.nets.classifier import build_model
from models.inference.predict import PREDICTION_COLUMNS, predict


class MeanBrightness(nn.Module):
    """logit = 10 * mean pixel - 5: a model whose answer is known for constant images."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.mean(dim=(1, 2, 3)) - 5.0


def write_manifest(root: Path) -> pd.DataFrame:
    """Seven rows: 3 test (one of them an augmented copy), 2 train, 2 validation; constant PNGs."""
    rows = []
    specs = [
        ("DBT-P00001", "test", 0, 40, None), ("DBT-P00002", "train", 1, 200, None),
        ("DBT-P00003", "test", 1, 220, None), ("DBT-P00003", "test", 1, 250, "slices/DBT-P00003/s2.png"),
        ("DBT-P00004", "validation", 0, 10, None), ("DBT-P00005", "test", 0, 128, None),
        ("DBT-P00006", "validation", 1, 90, None),
    ]
    for i, (pid, split, label, value, augmented_from) in enumerate(specs):
        rel = f"slices/{pid}/s{i}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 40), value, dtype=np.uint8), mode="L").save(root / rel)
        rows.append({
            "patient_id": pid, "study_uid": f"DBT-S{i:05d}", "view": "rcc", "slice_index": i, "label": label,
            "cohort": "cancer" if label else "normal", "split": split, "image_path": rel,
            "box_x": 5.0 if label else np.nan, "box_y": 6.0 if label else np.nan,
            "box_width": 7.0 if label else np.nan, "box_height": 8.0 if label else np.nan,
            "box_class": "cancer" if label else None, "augmented_from": augmented_from,
        })
    frame = pd.DataFrame(rows)
    frame["augmented_from"] = frame["augmented_from"].astype("string")
    return frame


def test_predict_returns_one_row_per_test_image_in_manifest_order(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path)
    model = MeanBrightness()
    out = predict(model, manifest, root=tmp_path, split="test", image_size=32, batch_size=2)
    assert list(out.columns) == PREDICTION_COLUMNS
    # Rows 0, 2 and 5; the augmented copy (row 3) is left out.
    assert out["manifest_row"].tolist() == [0, 2, 5]
    assert out["patient_id"].tolist() == ["DBT-P00001", "DBT-P00003", "DBT-P00005"]
    assert out["label"].tolist() == [0, 1, 0]
    assert (out["split"] == "test").all()
    expected = [1 / (1 + np.exp(-(10 * v / 255 - 5))) for v in (40, 220, 128)]
    assert out["probability"].to_numpy() == pytest.approx(expected, abs=1e-5)
    assert out["logit"].to_numpy() == pytest.approx([10 * v / 255 - 5 for v in (40, 220, 128)], abs=1e-5)
    assert out.loc[1, ["box_x", "box_y", "box_width", "box_height"]].tolist() == [5.0, 6.0, 7.0, 8.0]
    assert np.isnan(out.loc[0, "box_x"])
    assert out["cohort"].tolist() == ["normal", "cancer", "normal"]
    assert not model.training


def test_predict_with_a_tumour_classifier_is_deterministic(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path)
    model = build_model(model="vgg16", weights=None, image_size=32, seed=0)
    a = predict(model, manifest, root=tmp_path, split="validation", image_size=32, device="cpu")
    b = predict(model, manifest, root=tmp_path, split="validation", image_size=32, device="cpu")
    c = predict(model, manifest, root=tmp_path, split="validation", image_size=32, batch_size=1)
    assert len(a) == 2 and a["manifest_row"].tolist() == [4, 6]
    assert a["probability"].between(0, 1).all()
    pd.testing.assert_frame_equal(a, b)
    # Another batch size changes the CPU kernels' summation order, not the answer.
    assert c["probability"].to_numpy() == pytest.approx(a["probability"].to_numpy(), rel=1e-4)


def test_predict_without_optional_columns(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path).drop(columns=["cohort", "box_x", "box_y", "box_width", "box_height",
                                                      "box_class", "augmented_from"])
    out = predict(MeanBrightness(), manifest, root=tmp_path, split="test", image_size=32)
    assert list(out.columns) == PREDICTION_COLUMNS
    assert len(out) == 4  # nothing marks the copy as augmented any more
    assert out["cohort"].isna().all() and out["box_x"].isna().all()


def test_predict_rejects_an_empty_split_and_missing_columns(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path)
    with pytest.raises(ValueError, match="no .*images in split 'holdout'.*splits found"):
        predict(MeanBrightness(), manifest, root=tmp_path, split="holdout", image_size=32)
    with pytest.raises(ValueError, match="lacks the columns \\['image_path'\\]"):
        predict(MeanBrightness(), manifest.drop(columns="image_path"), root=tmp_path, split="test", image_size=32)


def test_predict_names_a_missing_png(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path)
    (tmp_path / manifest.loc[5, "image_path"]).unlink()
    with pytest.raises(FileNotFoundError, match="s5.png"):
        predict(MeanBrightness(), manifest, root=tmp_path, split="test", image_size=32)
