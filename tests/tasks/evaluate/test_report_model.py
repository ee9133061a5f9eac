"""The report's summary says per-image figures and, plainly, which model, weights and optimiser ran."""

from __future__ import annotations

import re
from pathlib import Path

from tasks.evaluate.metrics import evaluate_predictions
from tasks.evaluate.report import write_report
from tests.tasks.evaluate.test_report import COHORT_SUMMARY, HISTORY, _predictions

SCRATCH = {"train": {"model": {"model": "vgg16_bn", "weights": "none"},
                     "train": {"optimizer": "sgd", "momentum": 0.9, "lr": 0.001, "backbone_lr_factor": 10.0,
                               "batch_size": 16, "epochs": 5, "image_size": 64, "recalibrate_bn": True}},
           "evaluate": {"split": "test", "threshold": 0.5}}


def _summary_section(html: str) -> str:
    return re.search(r'<section id="summary">(.*?)</section>', html, re.S).group(1)


def test_summary_names_scratch_training_and_per_image_figures(tmp_path: Path) -> None:
    pred = _predictions()
    metrics = evaluate_predictions(pred, bootstrap=0, seed=0)
    path = write_report(tmp_path / "run", metrics=metrics, history=HISTORY, cohort_summary=COHORT_SUMMARY,
                        config=SCRATCH, predictions=pred, examples=[])
    summary = _summary_section(path.read_text(encoding="utf-8"))
    assert "VGG16 with batch normalisation (vgg16_bn)" in summary
    assert "trained from scratch" in summary and "no ImageNet weights" in summary
    assert "SGD with momentum 0.9, learning rate 0.001 (backbone 0.01)" in summary
    assert "BatchNorm statistics re-estimated" in summary
    image = metrics["levels"]["slice"]
    assert f"Per image (each slice scored on its own, the study's unit): {image['n']} images" in summary
    assert f"ROC AUC {image['metrics']['roc_auc']:.3f}" in summary


def _training_text(config: dict, tmp_path: Path) -> str:
    """The summary's model paragraph (``<p class="meta">Model: ...</p>``), or ``""``."""
    metrics = evaluate_predictions(_predictions(), bootstrap=0, null_draws=5)
    html = write_report(tmp_path / "run", metrics=metrics, history=None, cohort_summary=None, config=config,
                        predictions=None, examples=[]).read_text(encoding="utf-8")
    found = re.search(r'<p class="meta">Model: .*?</p>', _summary_section(html))
    return found.group(0) if found else ""


def test_training_text_for_transfer_learning_and_a_weights_file(tmp_path: Path) -> None:
    imagenet = {"train": {"model": {"model": "vgg16", "weights": "imagenet"},
                          "train": {"optimizer": "adam", "lr": 0.001}}}
    text = _training_text(imagenet, tmp_path)
    assert "Model: VGG16, <strong>fine-tuned from ImageNet weights</strong> (transfer learning); Adam, " \
           "learning rate 0.001." in text
    assert "scratch" not in text and "BatchNorm" not in text
    own = _training_text({"model": {"model": "inception_v3", "weights": "/w/mine.pth"}, "train": {}}, tmp_path)
    assert "Inception v3" in own and "<code>/w/mine.pth</code>" in own
    assert _training_text({"evaluate": {}}, tmp_path) == ""
