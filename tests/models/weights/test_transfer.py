"""An earlier tomoflow run as the starting point: which checkpoint it names and what a bad one says
(models/weights/transfer.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from models.weights.transfer import load_source


def test_a_pickled_model_in_a_run_folder_is_refused_without_torchs_advice(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    torch.save(nn.Linear(2, 2), run / "best.pt")
    with pytest.raises(ValueError) as caught:
        load_source(str(run))
    assert "weights_only" not in str(caught.value) and str(run / "best.pt") in str(caught.value)


def test_a_run_folder_is_read_from_best_then_last_and_other_settings_are_not_sources(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither best.pt nor last.pt"):
        load_source(str(run))
    torch.save({"model": {}, "model_config": {"model": "vgg16"}, "epoch": 2}, run / "last.pt")
    assert load_source(str(run))[1] == run / "last.pt"
    torch.save({"model": {}, "model_config": {"model": "vgg16"}, "epoch": 1}, run / "best.pt")
    ckpt, path = load_source(run)
    assert path == run / "best.pt" and ckpt["epoch"] == 1
    state = tmp_path / "plain.pth"
    torch.save(nn.Linear(2, 2).state_dict(), state)
    assert [load_source(w) for w in ("imagenet", "none", None, str(state))] == [None] * 4


def test_a_resnet18_run_is_a_starting_point_whose_first_forward_pass_is_the_sources(tmp_path: Path) -> None:
    from models.nets.classifier import build_model

    source = build_model(model="resnet18", weights=None, image_size=64, dropout=0.0, seed=1).eval()
    with torch.no_grad():  # move the BatchNorm statistics off their defaults, so that they must be copied
        source.backbone.bn1.running_mean.add_(0.3)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": source.state_dict(), "model_config": dict(source.config), "epoch": 3}, run / "best.pt")
    images = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))

    started = build_model(model="resnet18", weights=str(run), image_size=64, dropout=0.0, seed=9).eval()
    scratch = build_model(model="resnet18", weights=None, image_size=64, dropout=0.0, seed=9).eval()
    with torch.no_grad():
        assert torch.equal(started(images), source(images))
        assert not torch.allclose(scratch(images), source(images))
    # Another backbone cannot start from it, and the message says which to pass.
    with pytest.raises(ValueError, match="hold a resnet18 model; this run builds vgg16_bn: pass --model resnet18"):
        build_model(model="vgg16_bn", weights=str(run), image_size=64)
