"""The from-scratch baseline: BatchNorm recalibration, and the demo's recipe learning a tiny set.

The cause this guards against: VGG16 without batch normalisation, trained from scratch at
the study's SGD learning rate of 0.001, sits at chance for about a dozen epochs; and a
batch-normalised network validated with running statistics that lag its weights looks like
chance for epochs after it has learned. The demo's fallback recipe (vgg16_bn, SGD at 0.001
for the head and 0.01 for the backbone, statistics re-estimated before each validation) must
learn a tiny, plainly separable set within a few steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from models.nets.classifier import build_model
from models.inference.predict import predict
from models.training.checkpoint import load_classifier
from models.training.engine import recalibrate_batchnorm
from models.training.fit import fit
from tasks.core.config import TrainConfig
from tasks.core.presets import pipeline_config, scratch_config
from tests.models.training.test_augment import write_manifest


@pytest.fixture(autouse=True)
def _drop_checkpoints(tmp_path: Path) -> Iterator[None]:
    """Checkpoints are 60-140 MB each; pytest keeps recent temp folders."""
    yield
    for path in tmp_path.rglob("*.pt"):
        path.unlink()


def _batches(n: int, *, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(4, 1, 8, 8, generator=g) * 3 + 1, torch.zeros(4), torch.arange(4)) for _ in range(n)]


def test_recalibration_sets_the_statistics_of_the_pass() -> None:
    conv = nn.Conv2d(1, 3, 3, bias=False)
    model = nn.Sequential(conv, nn.BatchNorm2d(3), nn.ReLU())
    bn = model[1]
    bn.running_mean.fill_(50.0)  # stale statistics, as after a few fast-moving steps
    bn.running_var.fill_(1e4)
    model.eval()
    batches = _batches(5, seed=0)

    assert recalibrate_batchnorm(model, batches, torch.device("cpu")) == 1

    with torch.no_grad():
        outs = [conv(x) for x, _, _ in batches]
    mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert bn.momentum == 0.1 and not model.training  # settings and mode restored


def test_recalibration_leaves_frozen_and_batchnorm_free_networks_alone() -> None:
    frozen = build_model(model="vgg16_bn", weights=None, image_size=32, seed=0)
    frozen.set_backbone_trainable(False)
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    batches = [(torch.rand(2, 1, 32, 32), torch.zeros(2), torch.arange(2))]
    assert recalibrate_batchnorm(frozen, batches, torch.device("cpu")) == 0
    plain = build_model(model="vgg16", weights=None, image_size=32, seed=0)
    assert recalibrate_batchnorm(plain, batches, torch.device("cpu")) == 0
    after = frozen.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_demo_scratch_recipe_learns_a_tiny_set_within_a_few_steps(tmp_path: Path) -> None:
    # Positives carry a bright 8 x 8 square on noise; 12 steps of 8 images at 32 px.
    manifest = write_manifest(tmp_path / "data", {"train": (16, 16), "validation": (8, 8), "test": (1, 1)},
                              size=32, seed=1)
    demo = scratch_config(pipeline_config(preset="demo"))
    assert (demo.model.model, demo.model.weights, demo.train.recalibrate_bn) == ("vgg16_bn", "none", True)
    cfg = TrainConfig(
        manifest=str(manifest), run_dir=str(tmp_path / "run"), model=demo.model,
        train=demo.train.model_copy(update={"image_size": 32, "batch_size": 8, "epochs": 3, "num_workers": 0}),
        augment=demo.augment.model_copy(update={"offline_balance": False}),
    )
    result = fit(cfg)
    model = load_classifier(result["best"])
    frame = pd.read_parquet(manifest)
    scored = predict(model, frame, root=manifest.parent, split="validation", image_size=32)
    labels, probability = scored["label"].to_numpy(), scored["probability"].to_numpy()
    accuracy = float(np.mean((probability >= 0.5) == (labels == 1)))
    assert roc_auc_score(labels, probability) >= 0.95, scored
    assert accuracy >= 0.85, scored


def test_backbone_rate_is_a_multiple_of_the_head_rate() -> None:
    from models.training.engine import backbone_lr
    from tasks.core.config import TrainParams

    assert backbone_lr(TrainParams(lr=0.001), 0) == 0.001  # the study: one rate
    scratch = TrainParams(lr=0.001, backbone_lr_factor=10)
    assert backbone_lr(scratch, 0) == pytest.approx(0.01)
    staged = TrainParams(lr=0.001, backbone_lr_factor=10, freeze_epochs=1, unfreeze_lr_factor=0.1)
    assert backbone_lr(staged, 0) == 0 and backbone_lr(staged, 1) == pytest.approx(0.001)
