"""The demo: its from-scratch fallback recipe, its verdict, and what the report says it trained."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli_synth import DEMO_MIN_ACCURACY, DEMO_MIN_AUC, demo_verdict
from tasks.pipeline.run_config import weights_or_scratch as _weights_or_scratch
from tasks.core.presets import pipeline_config, scratch_config


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_demo_falls_back_to_the_scratch_recipe_without_imagenet_weights(empty_torch_home: Path) -> None:
    cfg = pipeline_config(preset="demo", data_root="d", output_root="o")
    # The preset itself keeps the study's transfer-learning settings.
    assert (cfg.model.model, cfg.model.weights, cfg.train.lr, cfg.train.recalibrate_bn) == (
        "vgg16", "imagenet", 0.001, False)
    used, note = _weights_or_scratch(cfg)
    assert (used.model.model, used.model.weights) == ("vgg16_bn", "none")
    assert (used.train.optimizer, used.train.lr, used.train.backbone_lr_factor, used.train.recalibrate_bn) == (
        "sgd", 0.001, 10, True)
    assert used.train.image_size == cfg.train.image_size and used.slices == cfg.slices
    assert note is not None and "FROM SCRATCH" in note and "vgg16_bn" in note and "vgg16-397923af.pth" in note
    assert "lr 0.001, backbone 0.01" in note


def test_demo_keeps_the_study_settings_with_imagenet_weights(empty_torch_home: Path) -> None:
    cached = empty_torch_home / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"present")  # only its presence is checked before training
    cfg = pipeline_config(preset="demo", data_root="d", output_root="o")
    used, note = _weights_or_scratch(cfg)
    assert note is None and used == cfg


def test_scratch_config_without_overrides_only_drops_the_weights() -> None:
    cfg = pipeline_config(preset="m2-inception", data_root="d", output_root="o")
    scratch = scratch_config(cfg)
    assert scratch.model.weights == "none"
    assert scratch.model_copy(update={"model": cfg.model}) == cfg


def _metrics(auc: float | None, accuracy: float) -> dict:
    return {"levels": {"slice": {"n": 25, "n_positive": 12, "metrics": {
        "roc_auc": auc, "accuracy": accuracy, "sensitivity": 0.75, "specificity": 0.9}}}}


def test_demo_verdict_passes_a_classifier_that_learned() -> None:
    line, learned = demo_verdict(_metrics(0.97, 0.88))
    assert learned
    assert "ROC AUC 0.970, accuracy 0.880, sensitivity 0.750, specificity 0.900" in line
    assert "25 images, 12 with a tumour" in line


@pytest.mark.parametrize(("auc", "accuracy"), [(0.5, 0.52), (DEMO_MIN_AUC - 0.01, 0.95),
                                               (0.99, DEMO_MIN_ACCURACY - 0.01), (None, 0.9)])
def test_demo_verdict_fails_a_classifier_at_chance(auc: float | None, accuracy: float) -> None:
    line, learned = demo_verdict(_metrics(auc, accuracy))
    assert not learned
    assert line.startswith("FAILED") and "did not learn" in line
