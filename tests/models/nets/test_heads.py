"""The study's dense heads: layer sizes, He initialisation, and the binary loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.nets.heads import ClassifierOutput, build_head, classification_loss, logits_of


def _linears(head: nn.Module) -> list[nn.Linear]:
    return [m for m in head.modules() if isinstance(m, nn.Linear)]


def test_single_head_layers() -> None:
    head = build_head("single", 2048, dropout=0.3)
    assert [(l.in_features, l.out_features) for l in _linears(head)] == [(2048, 100), (100, 1)]
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert head[2].p == 0.3
    assert head(torch.randn(4, 2048)).shape == (4, 1)


def test_dense4_head_layers() -> None:
    head = build_head("dense4", 512)
    sizes = [(l.in_features, l.out_features) for l in _linears(head)]
    assert sizes == [(512, 8192), (8192, 2048), (2048, 512), (512, 128), (128, 1)]
    assert sum(isinstance(m, nn.ReLU) for m in head) == 4
    assert [m.p for m in head if isinstance(m, nn.Dropout)] == [0.5] * 4
    assert isinstance(head[-1], nn.Linear)  # a logit: no activation after the last layer


def test_zero_dropout_leaves_dropout_out() -> None:
    head = build_head("single", 16, dropout=0.0)
    assert not any(isinstance(m, nn.Dropout) for m in head.modules())


def test_he_initialisation_and_zero_bias() -> None:
    head = build_head("dense4", 512, generator=torch.Generator().manual_seed(0))
    for layer in _linears(head):
        fan_in = layer.in_features
        assert torch.count_nonzero(layer.bias) == 0
        if layer.weight.numel() >= 10_000:  # enough samples for a tight estimate
            expected = math.sqrt(2.0 / fan_in)
            # PyTorch's default init would give 1 / sqrt(3 * fan_in), 41% of this.
            assert layer.weight.std().item() == pytest.approx(expected, rel=0.03), (fan_in, layer.out_features)
            assert abs(layer.weight.mean().item()) < 0.05 * expected


def test_generator_makes_heads_reproducible() -> None:
    a = build_head("single", 64, generator=torch.Generator().manual_seed(7))
    b = build_head("single", 64, generator=torch.Generator().manual_seed(7))
    c = build_head("single", 64, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a[0].weight, c[0].weight)


def test_invalid_kind_names_value_and_allowed() -> None:
    with pytest.raises(ValueError, match=r"'dense5'.*\['dense4', 'single'\]"):
        build_head("dense5", 512)  # type: ignore[arg-type]


@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_invalid_dropout(dropout: float) -> None:
    with pytest.raises(ValueError, match="dropout"):
        build_head("single", 8, dropout=dropout)


def test_loss_without_aux_is_plain_bce() -> None:
    logits = torch.tensor([0.5, -1.0, 2.0])
    target = torch.tensor([1, 0, 0])
    expected = F.binary_cross_entropy_with_logits(logits, target.float())
    assert torch.allclose(classification_loss(logits, target), expected)
    assert torch.allclose(classification_loss(logits, target.bool().view(3, 1)), expected)


def test_loss_adds_weighted_aux_loss() -> None:
    logits, aux = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([-0.3, 0.7, 1.5])
    target = torch.tensor([1.0, 0.0, 0.0])
    main = F.binary_cross_entropy_with_logits(logits, target)
    aux_loss = F.binary_cross_entropy_with_logits(aux, target)
    out = ClassifierOutput(logits, aux)
    assert torch.allclose(classification_loss(out, target), main + 0.4 * aux_loss)
    assert torch.allclose(classification_loss(out, target, aux_weight=1.0), main + aux_loss)
    assert torch.allclose(classification_loss(out, target, aux_weight=0.0), main)
    assert logits_of(out) is logits and logits_of(logits) is logits


def test_pos_weight_scales_positive_term() -> None:
    logits, target = torch.tensor([0.2, -0.4]), torch.tensor([1.0, 0.0])
    expected = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(3.0))
    assert torch.allclose(classification_loss(logits, target, pos_weight=3.0), expected)
    assert not torch.allclose(classification_loss(logits, target), expected)


def test_loss_rejects_mismatched_target() -> None:
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        classification_loss(torch.zeros(3), torch.zeros(2))
