"""The trivial-score baseline (tasks.evaluate.trivial_scores) and the near-constant degenerate rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.evaluate.metrics_chance import degeneracy
from tasks.evaluate.trivial_scores import SCORES, image_scores, paired_auc_difference, trivial_baseline


def _write(root: Path, name: str, image: np.ndarray) -> str:
    path = root / f"{name}.png"
    Image.fromarray(image.astype(np.uint8)).save(path)
    return path.name


def _collection(root: Path, *, bright: bool, n: int = 24, seed: int = 0) -> pd.DataFrame:
    """``n`` images per split (validation, test), half with a 6 x 6 lesion (bright or invisible)."""
    rng = np.random.default_rng(seed)
    rows = []
    for split in ("validation", "test"):
        for i in range(n):
            label = i % 2
            img = rng.normal(100, 8, (48, 48))
            if label and bright:
                y, x = rng.integers(5, 35, 2)
                img[y:y + 6, x:x + 6] += 90
            rows.append({"patient_id": f"P{split[0]}{i // 2:03d}", "study_uid": "S", "view": "lcc" if i % 4 < 2 else "rcc",
                         "slice_index": 0, "label": label, "split": split,
                         "image_path": _write(root, f"{split}{i}", np.clip(img, 0, 255))})
    return pd.DataFrame(rows)


def test_scores_find_a_bright_lesion() -> None:
    img = np.full((40, 40), 100, np.uint8)
    plain = image_scores(img)
    img[10:16, 10:16] = 250
    lesion = image_scores(img)
    assert set(plain) == set(SCORES)
    assert all(lesion[k] > plain[k] for k in ("brightest_mean_5pct", "brightest_mean_10pct", "percentile_99.9"))
    assert plain["brightest_mean_10pct"] == pytest.approx(100 / 255, abs=1e-4)


def test_random_model_on_bright_lesions_does_not_beat_the_trivial_score(tmp_path: Path) -> None:
    manifest = _collection(tmp_path, bright=True)
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    pred = test.assign(probability=np.random.default_rng(1).random(len(test)))
    out = trivial_baseline(pred, manifest, tmp_path, bootstrap=200, seed=0)
    assert out["chosen_on"] == "validation" and out["score"] in SCORES
    image = out["levels"]["slice"]
    assert image["roc_auc"] == pytest.approx(1.0) and image["roc_auc_interval"][0] > 0.9
    assert image["beats_trivial"] is False and out["beats_trivial"] is False
    assert image["difference_interval"][1] < 0  # clearly worse, on the same images
    assert "does NOT beat the trivial score" in out["note"] and out["score"] in out["note"]
    assert set(out["levels"]) == {"slice", "patient"}


def test_a_model_that_sees_what_brightness_cannot_beats_it(tmp_path: Path) -> None:
    manifest = _collection(tmp_path, bright=False)
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    pred = test.assign(probability=np.where(test["label"] == 1, 0.8, 0.2))
    out = trivial_baseline(pred, manifest, tmp_path, bootstrap=200, seed=0)
    image = out["levels"]["slice"]
    assert image["model_roc_auc"] == pytest.approx(1.0) and image["roc_auc"] < 0.8
    assert image["beats_trivial"] is True and out["note"] is None


def test_without_a_validation_split_the_choice_is_said_to_be_optimistic(tmp_path: Path) -> None:
    manifest = _collection(tmp_path, bright=True)
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    out = trivial_baseline(test.assign(probability=0.5), test, tmp_path, bootstrap=0)
    assert out["chosen_on"] == "test" and "optimistic" in out["chosen_note"]
    assert out["levels"]["slice"]["difference_interval"] is None


def test_paired_difference_is_zero_for_the_same_scores() -> None:
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"patient_id": [f"P{i}" for i in range(30)], "study_uid": "S", "view": "lcc",
                          "slice_index": 0, "label": np.arange(30) % 2, "a": rng.random(30)})
    table["b"] = table["a"]
    out = paired_auc_difference(table, "a", "b", n=100)
    assert out["difference"] == 0 and out["interval"] == [0.0, 0.0]


def test_near_constant_outputs_are_degenerate_relative_to_the_classes() -> None:
    labels = np.arange(40) % 2
    # A collapsed Adam run: every probability between 0.534 and 0.539 (SD above the old 1e-3 cut-off).
    collapsed = 0.534 + 0.005 * np.random.default_rng(0).random(40)
    flagged, why = degeneracy(collapsed, 0.5, labels=labels)
    assert flagged and "near-constant" in why
    # Narrow but clearly separated by class: not degenerate.
    separated = np.where(labels == 1, 0.56, 0.52) + 0.001 * np.random.default_rng(1).random(40)
    assert degeneracy(separated, 0.54, labels=labels) == (False, None)
    # Random scores spread widely: not degenerate (they are caught by the null and the trivial score).
    assert degeneracy(np.random.default_rng(2).random(40), 0.5, labels=labels) == (False, None)
