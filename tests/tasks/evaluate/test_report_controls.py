"""The report's references: Wilson intervals at the edges, chance lines, Grad-CAM and occlusion controls,
the trivial score and the word "synthetic"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from models.explain.controls import control_box, localisation_references, occlusion_control
from tasks.evaluate.report import write_report
from tasks.evaluate.metrics_chance import chance_losses
from tasks.evaluate.metrics import evaluate_predictions
from tasks.evaluate.report_format import interval_of, wilson_interval


def test_wilson_interval_at_the_edges() -> None:
    low, high = wilson_interval(9, 9)
    assert 0.6 < low < 0.75 and high == pytest.approx(1.0)
    # A proportion at 100% whose bootstrap collapsed is shown with Wilson's interval, in its counts.
    entry = {"metrics": {"sensitivity": 1.0, "specificity": 0.8}, "confusion": {"tp": 9, "fn": 0, "tn": 8, "fp": 2},
             "intervals": {"sensitivity": [1.0, 1.0], "specificity": [0.5, 1.0]}}
    interval, wilson = interval_of(entry, "sensitivity")
    assert wilson and interval[0] == pytest.approx(low)
    assert interval_of(entry, "specificity") == ([0.5, 1.0], False)


def test_accuracy_chance_is_the_larger_class() -> None:
    manifest = pd.DataFrame({"split": ["train"] * 10 + ["validation"] * 4, "label": [1] * 3 + [0] * 7 + [1, 0, 0, 0]})
    chance = chance_losses(manifest, "weights")
    assert chance["accuracy_train"] == pytest.approx(0.7) and chance["accuracy_validation"] == pytest.approx(0.75)
    assert chance_losses(manifest, "sampler")["accuracy_train"] == 0.5


def _lesion_images(root: Path, n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        img = np.zeros((64, 64), np.uint8)
        img[4:60, 4:60] = rng.integers(90, 110, (56, 56))  # tissue; the border is air
        x, y = int(rng.integers(8, 44)), int(rng.integers(8, 44))
        img[y:y + 8, x:x + 8] = 250
        Image.fromarray(img).save(root / f"{i}.png")
        rows.append({"image_path": f"{i}.png", "label": 1, "box_x": x, "box_y": y, "box_width": 8, "box_height": 8})
    return pd.DataFrame(rows)


def test_localisation_references(tmp_path: Path) -> None:
    rows = _lesion_images(tmp_path)
    ref = localisation_references(rows, tmp_path, 64)
    assert ref["n"] == 6 and ref["chance_fraction"] == pytest.approx(64 / 64 ** 2)
    assert ref["brightest_hits"] == 6 and ref["brightest_fraction"] == 1.0


class _Brightest(nn.Module):
    """A 'model' that answers with the brightest 4 x 4 mean: it looks at the lesion and nothing else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 30 * (nn.functional.avg_pool2d(x, 4, stride=1).amax(dim=(1, 2, 3)) - 0.6)


def test_occlusion_control_hides_tissue_not_the_lesion(tmp_path: Path) -> None:
    rows = _lesion_images(tmp_path)
    rng = np.random.default_rng(1)
    image = np.asarray(Image.open(tmp_path / "0.png"), dtype=np.float32) / 255
    box = (float(rows.loc[0, "box_x"]), float(rows.loc[0, "box_y"]), 8.0, 8.0)
    cx, cy, w, h = control_box(image, box, rng)
    assert (w, h) == (8, 8) and (image[int(cy):int(cy) + 8, int(cx):int(cx) + 8] > 0).all()
    assert not (cx < box[0] + 8 and box[0] < cx + 8 and cy < box[1] + 8 and box[1] < cy + 8)

    from models.explain.occlusion import occlusion_check

    model = _Brightest()
    lesion = occlusion_check(model, rows, tmp_path, 64)
    control = occlusion_control(model, rows, tmp_path, 64)
    assert control["n"] == 6 and lesion["flip_fraction"] == 1.0
    assert control["flip_fraction"] == 0.0 and control["mean_drop"] < 0.05 < lesion["mean_drop"]


def test_page_says_synthetic_trivial_and_controls(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pred = pd.DataFrame({"patient_id": [f"P{i}" for i in range(12)], "study_uid": "S", "view": "lcc",
                         "slice_index": 0, "label": [1, 0] * 6, "probability": rng.random(12), "split": "test"})
    metrics = evaluate_predictions(pred, bootstrap=20, null_draws=10)
    metrics["trivial"] = {"score": "brightest_mean_10pct", "chosen_note": "chosen on the validation split",
                          "beats_trivial": False, "note": "the model does NOT beat the trivial score X",
                          "levels": {"slice": {"roc_auc": 0.9, "roc_auc_interval": [0.8, 1.0], "model_roc_auc": 0.5,
                                               "model_minus_trivial": -0.4, "difference_interval": [-0.6, -0.2],
                                               "beats_trivial": False}}}
    metrics["localization"] = {"layer": "features", "map_resolution": [4, 4], "hits": 5, "n": 9, "fraction": 5 / 9,
                               "n_no_signal": 0, "references": {"chance_fraction": 0.03, "brightest_fraction": 1.0,
                                                                "brightest_hits": 9, "n": 9}}
    metrics["occlusion"] = {"mean_drop": 0.1, "mean_probability": 0.6, "mean_probability_hidden": 0.5, "n": 9,
                            "n_called_positive": 5, "flips": 1, "flip_fraction": 0.2,
                            "control": {"mean_drop": 0.12, "n": 9, "flips": 1, "n_called_positive": 5,
                                        "flip_fraction": 0.2}}
    page = write_report(tmp_path / "run", metrics=metrics, history=None,
                        cohort_summary={"data_origin": {"synthetic": True, "difficulty": "moderate"}},
                        config={"evaluate": {}}, predictions=pred).read_text()
    assert "synthetic (generated by tomoflow synth, lesion difficulty moderate)" in page
    assert "Against a trivial score" in page and "the model does NOT beat it" in page
    assert "random point lands in the box 3.0%" in page and "9 of 9 (100.0%)" in page
    assert "no more often than the brightest spot" in page
    assert "Hiding the lesion does no more than hiding any tissue" in page
    plain = write_report(tmp_path / "run2", metrics=evaluate_predictions(pred, bootstrap=0, null_draws=5),
                         history=None, cohort_summary=None, config={"evaluate": {}}, predictions=None).read_text()
    assert "synthetic" not in plain and "Against a trivial score" not in plain


def test_demo_printout_and_dashboard_carry_the_trivial_score() -> None:
    from flows.cli_synth import demo_verdict
    from tasks.evaluate.report import summary_markdown

    rng = np.random.default_rng(0)
    pred = pd.DataFrame({"patient_id": [f"P{i}" for i in range(12)], "study_uid": "S", "view": "lcc",
                         "slice_index": 0, "label": [1, 0] * 6, "probability": rng.random(12), "split": "test"})
    metrics = evaluate_predictions(pred, bootstrap=0, null_draws=5)
    metrics["trivial"] = {"score": "percentile_99.9", "chosen_note": "chosen on the validation split",
                          "note": "the model does NOT beat the trivial score percentile_99.9",
                          "levels": {"slice": {"roc_auc": 0.97, "roc_auc_interval": [0.9, 1.0],
                                               "beats_trivial": False}}}
    line, _ = demo_verdict(metrics)
    assert "trivial brightness score (percentile_99.9) ROC AUC 0.970" in line and "does NOT beat it" in line
    markdown = summary_markdown(metrics)
    assert "ROC AUC of the trivial score (percentile_99.9) | 0.970" in markdown and "NOT beaten" in markdown
