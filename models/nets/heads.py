"""The study's dense heads, put after a convolutional base, and their binary loss.

Each head ends in a single logit (tumour vs. no tumour), trained with
``BCEWithLogitsLoss``. The new ``Linear`` layers get He (Kaiming) normal
initialisation for ReLU, ``std = sqrt(2 / fan_in)``, and zero biases, so the head starts
with well-scaled activations whatever the backbone's feature size.

Heads:
    ``single``: ``Linear(in, 100) -> ReLU -> Dropout -> Linear(100, 1)``.
    ``dense4``: ``Linear(in, 8192) -> ReLU -> Dropout -> 2048 -> 512 -> 128`` (each with
    ReLU and Dropout) ``-> Linear(128, 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "HEAD_WIDTHS",
    "ClassifierOutput",
    "HeadKind",
    "build_head",
    "check_head_args",
    "classification_loss",
    "he_init_",
    "logits_of",
]

HeadKind = Literal["single", "dense4"]

#: Hidden widths of each head; every head then ends in ``Linear(widths[-1], 1)``.
HEAD_WIDTHS: dict[str, tuple[int, ...]] = {
    "single": (100,),
    "dense4": (8192, 2048, 512, 128),
}


class ClassifierOutput(NamedTuple):
    """What a classifier returns in training mode when it has an auxiliary head.

    Mirrors torchvision's ``InceptionOutputs``: in eval mode, or for networks without an
    auxiliary classifier, the model returns the bare ``logits`` tensor instead.

    Attributes:
        logits: Main logits, shape ``(B,)``.
        aux_logits: Auxiliary logits from Inception's AuxLogits branch, shape ``(B,)``.
    """

    logits: Tensor
    aux_logits: Tensor


def he_init_(linear: nn.Linear, *, generator: torch.Generator | None = None) -> nn.Linear:
    """He-normal weights (fan-in, ReLU gain) and zero bias, in place.

    Args:
        linear: The layer to initialise.
        generator: Random generator; ``None`` uses torch's global one.

    Returns:
        The same layer.
    """
    nn.init.kaiming_normal_(linear.weight, mode="fan_in", nonlinearity="relu", generator=generator)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
    return linear


def build_head(
    kind: HeadKind,
    in_features: int,
    *,
    dropout: float = 0.5,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """Build one of the study's dense heads, ending in one logit.

    Args:
        kind: ``"single"`` (one hidden layer of 100) or ``"dense4"`` (8192, 2048, 512, 128).
        in_features: Size of the backbone's feature vector.
        dropout: Dropout probability after each hidden ReLU; ``0`` leaves Dropout out.
        generator: Random generator for the He initialisation (explicit seeding).

    Returns:
        An ``nn.Sequential`` mapping ``(B, in_features)`` to ``(B, 1)``.

    Raises:
        ValueError: Unknown ``kind``, non-positive ``in_features``, or ``dropout``
            outside ``[0, 1)``.
    """
    check_head_args(kind, dropout=dropout)
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
        raise ValueError(f"in_features must be a positive int, got {in_features!r}")
    return _mlp((in_features, *HEAD_WIDTHS[kind]), dropout=dropout, generator=generator)


def check_head_args(kind: str, *, dropout: float = 0.5) -> None:
    """Validate a head configuration without building it.

    Raises:
        ValueError: Unknown ``kind``, or ``dropout`` outside ``[0, 1)``.
    """
    if kind not in HEAD_WIDTHS:
        raise ValueError(f"head kind {kind!r} is not one of the allowed kinds {sorted(HEAD_WIDTHS)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def _mlp(widths: Sequence[int], *, dropout: float, generator: torch.Generator | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layers += [he_init_(nn.Linear(fan_in, fan_out), generator=generator), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(he_init_(nn.Linear(widths[-1], 1), generator=generator))
    return nn.Sequential(*layers)


def logits_of(output: Tensor | ClassifierOutput) -> Tensor:
    """The main logits of a model output, whether or not it carries auxiliary logits."""
    return output.logits if isinstance(output, ClassifierOutput) else output


def classification_loss(
    output: Tensor | ClassifierOutput,
    target: Tensor,
    *,
    aux_weight: float = 0.4,
    pos_weight: float | Tensor | None = None,
) -> Tensor:
    """Binary cross-entropy on logits, plus ``aux_weight`` times the auxiliary loss if present.

    This is the Inception v3 recipe (main loss + 0.4 x auxiliary loss) used by
    torchvision's reference training script; a bare logits tensor (eval mode, VGG16, or
    Inception with the auxiliary branch disabled) gives the plain loss.

    Args:
        output: ``(B,)`` logits, or a :class:`ClassifierOutput` from training mode.
        target: ``(B,)`` labels, 1 = tumour; bool, int or float (soft labels allowed).
        aux_weight: Weight of the auxiliary loss.
        pos_weight: Weight of positive examples (``BCEWithLogitsLoss``'s ``pos_weight``),
            e.g. ``n_negative / n_positive`` for an unbalanced training set.

    Returns:
        The scalar loss (mean over the batch).

    Raises:
        ValueError: ``target`` doesn't have one label per logit.
    """
    logits = logits_of(output)
    if target.numel() != logits.numel():
        raise ValueError(
            f"target has shape {tuple(target.shape)} but the logits have shape {tuple(logits.shape)}: "
            "expected one label per example"
        )
    target = target.reshape(logits.shape).to(device=logits.device, dtype=logits.dtype)
    weight = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
    if isinstance(output, ClassifierOutput) and aux_weight:
        loss = loss + aux_weight * F.binary_cross_entropy_with_logits(output.aux_logits, target, pos_weight=weight)
    return loss

