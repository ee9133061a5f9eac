"""The classifier: seeded scratch builds, inputs, Inception's auxiliary head, freezing
(models/nets/classifier.py)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from models.nets import classifier
from models.nets.classifier import TumorClassifier, build_model
from models.nets.heads import ClassifierOutput, classification_loss
from models.weights.resolve import backbone_spec


@pytest.fixture(scope="module")
def _inception75() -> TumorClassifier:
    return build_model(model="inception_v3", weights=None, image_size=75, seed=0)


@pytest.fixture(scope="module")
def _inception299() -> TumorClassifier:
    return build_model(model="inception_v3", weights=None, image_size=299, seed=0)


@pytest.fixture
def inception75(_inception75: TumorClassifier) -> TumorClassifier:
    """A scratch Inception v3 classifier for 75 x 75 inputs (no aux head), seed 0."""
    return copy.deepcopy(_inception75)


@pytest.fixture
def inception299(_inception299: TumorClassifier) -> TumorClassifier:
    """A scratch Inception v3 classifier for 299 x 299 inputs, with the aux head, seed 0."""
    return copy.deepcopy(_inception299)

# ---------------------------------------------------------------- from scratch


def test_scratch_build_is_seeded_and_rebuilt_from_config(inception75: TumorClassifier) -> None:
    model = inception75.eval()
    assert model.config == {"model": "inception_v3", "head": "single", "image_size": 75, "dropout": 0.5, "aux_logits": False}
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    twin = build_model(**model.config, weights="none", seed=0).eval()
    assert torch.equal(torch.rand(1), expected_draw), "a seeded build must leave the global RNG alone"

    state, twin_state = model.state_dict(), twin.state_dict()
    assert state.keys() == twin_state.keys()
    assert all(torch.equal(state[k], twin_state[k]) for k in state)
    x = torch.rand(1, 1, 75, 75)
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))


def test_other_seed_differs_and_aux_is_disabled_with_a_note(
    inception75: TumorClassifier, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=classifier.__name__):
        other = build_model(model="inception_v3", weights=None, image_size=224, seed=1)
    assert "auxiliary classifier disabled" in caplog.text and "299" in caplog.text
    assert other.aux_head is None and other.backbone.AuxLogits is None
    assert other.config["aux_logits"] is False
    out = other.train()(torch.rand(2, 1, 75, 75))
    assert isinstance(out, torch.Tensor) and out.shape == (2,)

    a, b = inception75.state_dict(), other.state_dict()
    assert not torch.equal(a["backbone.Conv2d_1a_3x3.conv.weight"], b["backbone.Conv2d_1a_3x3.conv.weight"])
    assert not torch.equal(a["head.0.weight"], b["head.0.weight"])


# ---------------------------------------------------------------- inputs


@pytest.mark.parametrize(("name", "minimum"), [("inception_v3", 75), ("vgg16", 32)])
def test_too_small_image_size_is_rejected(monkeypatch: pytest.MonkeyPatch, name: str, minimum: int) -> None:
    monkeypatch.setattr(tvm, name, lambda **kw: pytest.fail("built the network before checking the size"))
    with pytest.raises(ValueError, match=rf"minimum input size is {minimum}x{minimum}"):
        build_model(model=name, weights=None, image_size=minimum - 1)  # type: ignore[arg-type]


def test_bad_names_are_rejected_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tvm, "inception_v3", lambda **kw: pytest.fail("built the network"))
    with pytest.raises(ValueError, match=r"'resnet50'.*\['inception_v3', 'resnet18', 'vgg16', 'vgg16_bn'\]"):
        build_model(model="resnet50", weights=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'dense5'"):
        build_model(model="inception_v3", weights=None, head="dense5", image_size=299)  # type: ignore[arg-type]


def test_inception_accepts_the_study_sizes(inception299: TumorClassifier) -> None:
    # On the meta device: every layer's shape rules are checked, nothing is computed.
    model = inception299.to("meta")
    for side in (299, 500):
        out = model.train()(torch.empty(2, 1, side, side, device="meta"))
        assert isinstance(out, ClassifierOutput) and out.logits.shape == out.aux_logits.shape == (2,)
    for side in (75, 224, 299, 500):
        assert model.eval()(torch.empty(2, 3, side, side, device="meta")).shape == (2,)
    with pytest.raises(ValueError, match="minimum of 75x75"):
        model(torch.empty(1, 1, 74, 74, device="meta"))
    with pytest.raises(ValueError, match="auxiliary classifier"):
        model.train()(torch.empty(2, 1, 224, 224, device="meta"))


def test_gray_input_equals_preprocessed_rgb(inception75: TumorClassifier) -> None:
    model = inception75.eval()
    gray = torch.rand(2, 1, 75, 75)
    spec = backbone_spec("inception_v3")
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    rgb = (gray.expand(2, 3, 75, 75) - mean) / std
    with torch.no_grad():
        assert torch.allclose(model(gray), model(rgb), atol=1e-5)


# ---------------------------------------------------------------- Inception's auxiliary head


def test_aux_loss_in_training_only(inception299: TumorClassifier) -> None:
    model = inception299
    model.set_backbone_trainable(False)  # only the new layers need gradients here
    assert model.aux_head is not None and model.aux_head.in_features == 768 and model.aux_head.out_features == 1
    assert isinstance(model.backbone.AuxLogits.fc, nn.Identity)
    x, y = torch.rand(2, 1, 299, 299), torch.tensor([1.0, 0.0])

    out = model.train()(x)
    assert isinstance(out, ClassifierOutput)
    assert out.logits.shape == out.aux_logits.shape == (2,)
    main = F.binary_cross_entropy_with_logits(out.logits, y)
    aux = F.binary_cross_entropy_with_logits(out.aux_logits, y)
    assert torch.allclose(classification_loss(out, y), main + 0.4 * aux)
    classification_loss(out, y).backward()
    assert model.aux_head.weight.grad is not None

    with torch.no_grad():
        logits = model.eval()(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2,)
    assert torch.allclose(classification_loss(logits, y), F.binary_cross_entropy_with_logits(logits, y))


# ---------------------------------------------------------------- freezing


def test_freeze_and_unfreeze_backbone(inception75: TumorClassifier) -> None:
    model = inception75
    backbone, head = model.backbone_parameters(), model.head_parameters()
    n_total = sum(p.numel() for p in model.parameters())
    n_head = sum(p.numel() for p in head)
    assert n_head == 2048 * 100 + 100 + 100 + 1
    assert sum(p.numel() for p in backbone) + n_head == n_total
    assert {id(p) for p in backbone}.isdisjoint(id(p) for p in head)

    model.set_backbone_trainable(False)
    model.train()
    assert not model.backbone_trainable
    assert not any(p.requires_grad for p in backbone) and all(p.requires_grad for p in head)
    batchnorms = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms and not any(m.training for m in batchnorms)
    assert model.training and model.head.training
    stats = batchnorms[0].running_mean.clone()
    classification_loss(model(torch.rand(2, 1, 75, 75)), torch.tensor([1, 0])).backward()
    assert all(p.grad is None for p in backbone) and all(p.grad is not None for p in head)
    assert torch.equal(batchnorms[0].running_mean, stats)

    model.set_backbone_trainable(True)
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in batchnorms)
    model(torch.rand(2, 1, 75, 75))
    assert not torch.equal(batchnorms[0].running_mean, stats)


def test_head_parameters_include_aux_head(inception299: TumorClassifier) -> None:
    model = inception299
    ids = {id(p) for p in model.head_parameters()}
    assert id(model.aux_head.weight) in ids and id(model.aux_head.bias) in ids
    assert not ids & {id(p) for p in model.backbone_parameters()}
