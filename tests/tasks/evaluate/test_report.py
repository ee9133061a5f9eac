"""The HTML report: every section, self-contained, undefined metrics explained; artifact contents."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.evaluate.metrics_point import LEVELS, METRICS
from tasks.core.schema import POSITIVE_COHORTS
from tasks.evaluate.metrics import evaluate_predictions
from tasks.evaluate.report import SECTION_HEADINGS, metrics_table, summary_markdown, write_report

COHORT_SUMMARY: dict[str, Any] = {
    "audit": {
        "overlap_patients": 0, "patients": 20, "rows": 25,
        "splits": {
            "train": {"patients": 13, "rows": 15, "by_label": {"0": {"patients": 11, "rows": 11},
                                                             "1": {"patients": 2, "rows": 4}}},
            "validation": {"patients": 2, "rows": 2, "by_label": {"0": {"patients": 2, "rows": 2}}},
            "test": {"patients": 5, "rows": 8, "by_label": {"0": {"patients": 3, "rows": 3},
                                                           "1": {"patients": 2, "rows": 5}}},
        },
    },
    "images": 25, "image_size": 64, "planned_volumes": 24, "rejected_volumes": 1, "label_rejects": 0,
    "images_per_split_label": {"test/0": 3, "test/1": 5, "train/0": 11, "train/1": 4, "validation/0": 2},
    "rejects": {"unreadable pixel data": 1}, "strategy": "single-slice",
    "volumes": {"by_cohort": {"actionable": 2, "benign": 4, "cancer": 4, "normal": 77},
                "excluded": {"actionable": 2}, "included_by_cohort": {"benign": 4, "cancer": 4, "normal": 77},
                "included_patients": 20, "included_patients_by_cohort": {"benign": 2, "cancer": 2, "normal": 20},
                "included_volumes": 85, "volumes": 87},
}


def _predictions() -> pd.DataFrame:
    """Twelve test patients, 2 views x 2 slices each; cancer and normal only (no benign case)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        label = int(i < 5)
        for view in ("lcc", "rcc"):
            for s in range(2):
                p = float(np.clip(rng.normal(0.65 if label else 0.35, 0.2), 0.01, 0.99))
                rows.append({"patient_id": f"DBT-P{i:05d}", "study_uid": f"DBT-S{i:05d}", "view": view,
                             "slice_index": s, "label": label, "probability": p, "split": "test",
                             "cohort": "cancer" if label else "normal",
                             # Must never reach the page.
                             "patient_name": "Jane Q. Example", "report_text": "FINDINGS: secret words"})
    return pd.DataFrame(rows)


def _examples() -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:48, 0:48]
    heat = np.exp(-((yy - 20) ** 2 + (xx - 30) ** 2) / 60.0).astype(np.float32)
    out = []
    for kind, box in (("TP", (25.0, 15.0, 10.0, 10.0)), ("FP", None), ("FN", (5.0, 5.0, 8.0, 6.0))):
        out.append({"kind": kind, "probability": 0.8 if kind != "FN" else 0.3, "label": int(kind != "FP"),
                    "cohort": "cancer" if kind != "FP" else "normal",
                    "ids": {"patient_id": "DBT-P00003", "study_uid": "DBT-S00003", "view": "rcc", "slice_index": 4},
                    "image": rng.integers(0, 255, (48, 48)).astype(np.uint8), "heatmap": heat, "box": box,
                    "peak_in_box": None if box is None else kind == "TP"})
    return out


HISTORY = pd.DataFrame({
    "epoch": range(1, 9), "train_loss": np.linspace(0.7, 0.2, 8), "val_loss": [0.7, 0.6, 0.5, 0.45, 0.44, 0.47, 0.5, 0.55],
    "train_accuracy": np.linspace(0.5, 0.95, 8), "val_accuracy": np.linspace(0.5, 0.8, 8),
    "lr": 0.001, "seconds": 1.0,
})
CONFIG = {"train": {"model": {"model": "vgg16", "weights": "imagenet"}, "train": {"lr": 0.001, "image_size": 224}},
          "evaluate": {"split": "test", "threshold": 0.5}}


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run = tmp_path_factory.mktemp("run") / "run-7"
    pred = _predictions()
    metrics = evaluate_predictions(pred, bootstrap=200, seed=0)
    metrics["localization"] = {"fraction": 0.5, "n": 4, "hits": 2, "n_no_signal": 0}
    path = write_report(run, metrics=metrics, history=HISTORY, cohort_summary=COHORT_SUMMARY, config=CONFIG,
                        predictions=pred, examples=_examples())
    return {"path": path, "html": path.read_text(encoding="utf-8"), "metrics": metrics, "run": run}


def test_report_has_every_section(case: dict[str, Any]) -> None:
    assert case["path"] == case["run"] / "report.html"
    text = case["html"]
    for anchor, heading in SECTION_HEADINGS.items():
        if anchor == "deployment" and "whole_volume" not in case["metrics"]["levels"]:
            assert f'<section id="{anchor}">' not in text and f'href="#{anchor}"' not in text
            continue
        assert f'<section id="{anchor}"><h2>{heading}</h2>' in text
    for words in ("Learning curves", "ROC", "Confusion", "Calibration", "Cohort flow", "Leak audit", "Grad-CAM",
                  "Configuration", "benign", "cancer", "Brier", "What the interval means"):
        assert words in text


def test_report_is_self_contained(case: dict[str, Any]) -> None:
    text = case["html"]
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|file:)""", text, re.I)
    assert "@import" not in text and "url(" not in text and "<script" not in text and "<link" not in text
    images = re.findall(r'<img src="([^"]+)"', text)
    # Learning curves, ROC, confusion, calibration and three Grad-CAM examples.
    assert len(images) == 7
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_states_numbers_intervals_and_undefined_metrics(case: dict[str, Any]) -> None:
    text, metrics = case["html"], case["metrics"]
    patient = metrics["levels"]["patient"]
    sens = patient["metrics"]["sensitivity"]
    low, high = patient["intervals"]["sensitivity"]
    assert f"{100 * sens:.1f}%" in text and f"{100 * low:.1f}–{100 * high:.1f}%" in text
    assert f"{patient['confusion']['tp']} of {patient['n_positive']} patients with a tumour were flagged" in text
    assert "12 patients" in text
    # No benign case: benign sensitivity is undefined, and the page says why.
    reason = patient["by_cohort"]["benign"]["undefined"]["sensitivity"]
    assert "no benign" in reason and reason in text
    assert "Notes on undefined metrics" in text
    # Cohort flow and leak audit figures.
    assert "overlap: 0 patients" in text and "unreadable pixel data" in text and ">77<" in text
    assert "2 of 4" in text  # localisation check
    assert "DBT-P00003" in text and "vgg16" in text


def test_report_leaves_out_patient_identifying_columns(case: dict[str, Any]) -> None:
    assert "Jane" not in case["html"] and "secret words" not in case["html"]


def test_report_without_history_or_cohort_summary(tmp_path: Path) -> None:
    pred = _predictions()
    metrics = evaluate_predictions(pred, bootstrap=0)
    out = write_report(tmp_path, metrics=metrics, history=None, cohort_summary=None, config={}, predictions=pred,
                       examples=[], out_path=tmp_path / "sub" / "r.html")
    text = out.read_text(encoding="utf-8")
    assert out == tmp_path / "sub" / "r.html"
    assert "No training history" in text and "No cohort summary" in text and "No leak audit" in text
    assert "No bootstrap was run" in text and "No Grad-CAM examples" in text
    assert [p.name for p in out.parent.iterdir()] == ["r.html"]  # no temporary file left behind


def test_summary_markdown(case: dict[str, Any]) -> None:
    md = summary_markdown(case["metrics"])
    patient = case["metrics"]["levels"]["patient"]
    assert md.startswith("### Evaluation on the test split")
    assert "| Sensitivity |" in md and f"{100 * patient['metrics']['specificity']:.1f}%" in md
    assert "n = 12" in md and "| slice | 48 |" in md


def test_metrics_table_rows(case: dict[str, Any]) -> None:
    rows = metrics_table(case["metrics"])
    # Per level: every metric, the null ROC AUC, and sensitivity per cohort.
    assert len(rows) == len(LEVELS) * (len(METRICS) + 1 + len(POSITIVE_COHORTS))
    assert all(set(r) == {"level", "metric", "value", "low", "high", "n", "note"} for r in rows)
    acc = next(r for r in rows if r["level"] == "volume" and r["metric"] == "accuracy")
    level = case["metrics"]["levels"]["volume"]
    assert acc["value"] == pytest.approx(level["metrics"]["accuracy"], abs=1e-4)
    assert [acc["low"], acc["high"]] == pytest.approx(level["intervals"]["accuracy"], abs=1e-4)
    assert acc["n"] == 24 and acc["note"] == ""
    null = next(r for r in rows if r["level"] == "patient" and r["metric"] == "null_roc_auc")
    assert null["value"] == pytest.approx(case["metrics"]["levels"]["patient"]["null_roc_auc"], abs=1e-4)
    benign = next(r for r in rows if r["level"] == "patient" and r["metric"] == "sensitivity_benign")
    assert benign["value"] is None and benign["low"] is None and "no benign" in benign["note"]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary on this machine")
def test_report_renders_in_headless_chromium(case: dict[str, Any], tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    command = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,4000",
        case["path"].resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    assert shot.is_file()
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (4000, 1280)
    assert image.std() > 20
    colours = np.unique(image.reshape(-1, 3)[::7], axis=0)
    assert len(colours) > 200  # text, figures and heat maps, not a blank or error page


def _section_text(html: str, anchor: str) -> str:
    return html.split(f'<section id="{anchor}">', 1)[1].split("</section>", 1)[0]


def test_headline_shows_the_image_level_first_then_the_patient_level_with_its_null(case: dict[str, Any]) -> None:
    summary = _section_text(case["html"], "summary")
    assert summary.index("Accuracy, per image") < summary.index("Accuracy, per patient")
    patient = case["metrics"]["levels"]["patient"]
    assert f"random scores, aggregated the same way: {patient['null_roc_auc']:.3f}" in summary
    assert "ROC AUC of random scores" in _section_text(case["html"], "metrics")
    assert "Degenerate" not in summary


def test_random_and_degenerate_models_are_named_first(tmp_path: Path) -> None:
    pred = _predictions()
    pred["probability"] = np.random.default_rng(5).random(len(pred))
    metrics = evaluate_predictions(pred, bootstrap=100, null_draws=50)
    assert metrics["levels"]["patient"]["better_than_null"] is False
    text = write_report(tmp_path, metrics=metrics, history=None, cohort_summary=None, config={}, predictions=pred,
                        examples=[]).read_text(encoding="utf-8")
    summary = _section_text(text, "summary")
    assert "not better than random scores" in summary and "not shown to be better than chance" in summary
    md = summary_markdown(metrics)
    assert "**Warning:**" in md and "random ROC AUC" in md

    pred["probability"] = 0.494899  # a collapsed model: one value for every image
    metrics = evaluate_predictions(pred, bootstrap=0, null_draws=10)
    text = write_report(tmp_path, metrics=metrics, history=None, cohort_summary=None, config={}, predictions=pred,
                        examples=[]).read_text(encoding="utf-8")
    summary = _section_text(text, "summary")
    assert summary.index("Degenerate model") < summary.index("The classifier was evaluated")
    assert "hardly vary" in summary
    assert summary_markdown(metrics).split("\n")[2].startswith("**Degenerate model:**")


def test_learning_curves_mark_chance_and_keep_an_extreme_epoch_off_scale(tmp_path: Path) -> None:
    history = HISTORY.copy()
    history.loc[0, "val_loss"] = 18.0
    chance = {"train": 0.394, "validation": 0.41, "class_balance": "weights"}
    text = write_report(tmp_path, metrics=evaluate_predictions(_predictions(), bootstrap=0, null_draws=5),
                        history=history, cohort_summary=None, config={}, predictions=None, examples=[],
                        chance=chance).read_text(encoding="utf-8")
    curves = _section_text(text, "learning-curves")
    assert "train 0.394" in curves and "validation 0.410" in curves and "learned nothing" in curves
    assert "off the scale" in curves and "epoch 1 validation loss 18" in curves
    from tasks.evaluate.report_figures import _loss_top

    assert _loss_top(history[["train_loss", "val_loss"]].to_numpy().ravel(), 0.41) < 18.0
    assert _loss_top(HISTORY[["train_loss", "val_loss"]].to_numpy().ravel(), 0.41) is None


def test_gradcam_resolution_occlusion_and_cohort_flow_from_the_manifest(tmp_path: Path) -> None:
    pred = _predictions()
    metrics = evaluate_predictions(pred, bootstrap=0, null_draws=5)
    metrics["localization"] = {"fraction": 0.25, "n": 4, "hits": 1, "n_no_signal": 0, "layer": "backbone.features.21",
                               "map_resolution": [8, 8], "target_layer": "backbone.features.28",
                               "target_resolution": [4, 4], "note": "at 64 px the last layer's map is only 4 x 4"}
    metrics["occlusion"] = {"flip_fraction": 0.75, "mean_drop": 0.412, "n": 5, "n_called_positive": 4, "flips": 3,
                            "mean_probability": 0.8, "mean_probability_hidden": 0.388, "threshold": 0.5}
    examples = [dict(e, map_resolution=[8, 8], layer="backbone.features.21") for e in _examples()]
    # The manifest used: 2 normal patients of 3 listed, one image each.
    manifest = pd.DataFrame({"patient_id": ["A", "B", "C"], "study_uid": ["S1", "S2", "S3"], "view": "lcc",
                             "label": [0, 0, 1], "cohort": ["normal", "normal", "cancer"],
                             "split": ["train", "test", "test"]})
    text = write_report(tmp_path, metrics=metrics, history=None, cohort_summary=COHORT_SUMMARY, config={},
                        predictions=pred, examples=examples, manifest=manifest).read_text(encoding="utf-8")
    gradcam = _section_text(text, "gradcam")
    assert "<strong>8 x 8</strong>" in gradcam and "Grad-CAM map 8 x 8 cells" in gradcam and "only 4 x 4" in gradcam
    assert "3 (75.0%)" in gradcam and "0.412" in gradcam
    flow = _section_text(text, "cohort-flow")
    used = flow.split("Used in this run", 1)[1].split("</table>", 1)[0]
    assert "<td>normal</td><td class=\"num\">2</td>" in used and "patients eligible" in flow
    assert flow.index("Used in this run") < flow.index("before slice selection")


def test_report_escapes_text_from_the_data(tmp_path: Path) -> None:
    """The template autoescapes: an id, a reject reason or a weights path cannot inject markup."""
    pred = _predictions()
    metrics = evaluate_predictions(pred, bootstrap=0, null_draws=5)
    metrics["degenerate"], metrics["degenerate_reason"] = True, "all <b>equal</b>"
    examples = [dict(_examples()[0], ids={"patient_id": "<script>alert(1)</script>", "slice_index": 2})]
    summary = dict(COHORT_SUMMARY, rejects={"bad <i>header</i> & more": 2})
    config = {"model": {"model": "vgg16", "weights": "/w/<x>.pth"}, "train": {}}
    text = write_report(tmp_path, metrics=metrics, history=None, cohort_summary=summary, config=config,
                        predictions=None, examples=examples).read_text(encoding="utf-8")
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt; / slice 2" in text
    assert "bad &lt;i&gt;header&lt;/i&gt; &amp; more" in text
    assert "all &lt;b&gt;equal&lt;/b&gt;. None of the figures below" in text
    assert "<code>/w/&lt;x&gt;.pth</code>" in text


def test_templates_ship_as_package_data() -> None:
    """``pip install`` must carry the template: pyproject finds tasks.evaluate and lists its templates as data."""
    import tomllib
    from fnmatch import fnmatch

    from setuptools import find_packages

    root = Path(__file__).resolve().parents[3]
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = find_packages(str(root), include=setuptools["packages"]["find"]["include"])
    assert {"tasks.evaluate", "tasks.prepare", "tasks.core", "models", "flows", "synth"} <= set(found)
    patterns = setuptools["package-data"]["tasks.evaluate"]
    shipped = sorted(f"templates/{p.name}" for p in (root / "tasks" / "evaluate" / "templates").iterdir()
                     if p.is_file())
    assert "templates/report.html.j2" in shipped
    assert all(any(fnmatch(name, pat) for pat in patterns) for name in shipped)
