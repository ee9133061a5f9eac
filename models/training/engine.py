"""The training engine: device, optimiser and fine-tuning schedule, one epoch, evaluation.

Split by phase like torchvision's ``references/classification/train.py``:
:func:`build_optimizer` / :func:`apply_schedule` (two parameter groups, head and backbone,
and the freeze-then-fine-tune schedule), :func:`train_one_epoch` / :func:`evaluate` (one
pass each, returning loss and accuracy) and :func:`recalibrate_batchnorm`. None of them
writes a file; :mod:`models.training.fit` runs them epoch by epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as TF

from models.nets.classifier import TumorClassifier
from models.nets.heads import classification_loss, logits_of
from tasks.core.config import TrainParams

__all__ = [
    "apply_schedule",
    "backbone_lr",
    "batch_to_device",
    "build_optimizer",
    "evaluate",
    "precision",
    "recalibrate_batchnorm",
    "resolve_device",
    "train_one_epoch",
]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without CUDA is an error.

    Raises:
        ValueError: Unknown name, or ``"cuda"`` asked for on a machine without CUDA.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "train.device is 'cuda' but CUDA is not available on this machine (torch "
            f"{torch.__version__}); use 'auto' or 'cpu', or run on the GPU work pool"
        )
    if name not in ("cpu", "cuda"):
        raise ValueError(f"train.device {name!r} is not one of the allowed values ['auto', 'cpu', 'cuda']")
    return torch.device(name)


def build_optimizer(model: TumorClassifier, params: TrainParams) -> torch.optim.Optimizer:
    """SGD with momentum or Adam over two groups: 0 = head (and aux head), 1 = backbone.

    Both groups exist from the start, whatever the schedule, so the optimiser's state dict
    has the same shape in every epoch and a checkpoint taken while frozen resumes after
    unfreezing. :func:`apply_schedule` sets each group's learning rate per epoch.
    """
    groups = [
        {"params": model.head_parameters(), "lr": params.lr, "name": "head"},
        {"params": model.backbone_parameters(), "lr": backbone_lr(params, 0), "name": "backbone"},
    ]
    if params.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum)
    if params.optimizer == "adam":
        return torch.optim.Adam(groups, lr=params.lr)
    raise ValueError(f"train.optimizer {params.optimizer!r} is not one of the allowed values ['sgd', 'adam']")


def backbone_lr(params: TrainParams, epoch: int) -> float:
    """The backbone group's learning rate in ``epoch`` (0-based).

    ``0`` while frozen (``epoch < freeze_epochs``), ``lr * unfreeze_lr_factor`` once
    unfrozen after a frozen phase. With ``freeze_epochs=0`` there is no two-phase schedule
    and the whole network trains at ``lr``, as in the study. Either rate is multiplied by
    ``backbone_lr_factor`` (1 by default; about 10 for a batch-normalised backbone trained
    from scratch, which takes a higher rate than the new head).
    """
    if epoch < params.freeze_epochs:
        return 0.0
    rate = params.lr * params.unfreeze_lr_factor if params.freeze_epochs > 0 else params.lr
    return rate * params.backbone_lr_factor


def apply_schedule(model: TumorClassifier, optimizer: torch.optim.Optimizer, params: TrainParams, epoch: int) -> None:
    """Freeze or unfreeze the backbone and set both groups' learning rates for ``epoch`` (0-based)."""
    model.set_backbone_trainable(epoch >= params.freeze_epochs)
    optimizer.param_groups[0]["lr"] = params.lr
    optimizer.param_groups[1]["lr"] = backbone_lr(params, epoch)


def precision(device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype, channels_last) for a device: bf16 + NHWC on CUDA, fp32 on the CPU."""
    if device.type == "cuda":
        return torch.bfloat16, True
    return None, False


def batch_to_device(x: Tensor, device: torch.device, *, channels_last: bool = False) -> Tensor:
    """Move a batch of images to ``device`` as float32 in [0, 1], the model's input.

    The loaders of :func:`make_loaders` yield uint8 batches (a quarter of the bytes through
    worker shared memory, pinned memory and the host-to-device copy); they are scaled here,
    on the device, with torchvision's ``to_dtype`` (the same floats as ``ToDtype`` in a
    worker). Float batches pass through unchanged.

    Args:
        x: ``(B, 1, H, W)`` uint8 or float images.
        device: Target device.
        channels_last: Return NHWC memory format (CUDA with a ``channels_last`` model).
    """
    x = x.to(device, non_blocking=True)
    if not x.is_floating_point():
        x = TF.to_dtype(x, torch.float32, scale=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _batches(
    loader: Iterable[tuple[Tensor, Tensor, Any]], device: torch.device, *, channels_last: bool, max_batches: int | None
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """``(index, images, labels)`` of at most ``max_batches`` batches, on ``device``."""
    for batch, (x, y, _) in enumerate(loader):
        if max_batches is not None and batch >= max_batches:
            return
        yield batch, batch_to_device(x, device, channels_last=channels_last), y.to(device, non_blocking=True)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Mixed precision in ``dtype`` on ``device``, or plain fp32 for ``None``."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _correct(logits: Tensor, y: Tensor) -> Tensor:
    # sigmoid(z) >= 0.5  <=>  z >= 0
    return ((logits.detach().float() >= 0) == (y >= 0.5)).sum()


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    pos_weight: float | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    max_batches: int | None = None,
    aux_weight: float = 0.4,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Train for one pass over ``loader``.

    The loss is :func:`~models.nets.heads.classification_loss`: BCE on the logits, plus
    ``aux_weight`` x the auxiliary loss when the model returns Inception's auxiliary
    logits. bf16 autocast needs no gradient scaler.

    Args:
        model: The classifier, on ``device``.
        loader: Yields ``(images, labels, rows)``; images uint8 or float in [0, 1] (see
            :func:`batch_to_device`).
        optimizer: Its optimiser.
        device: Where to compute.
        pos_weight: BCE weight of positives (class balancing), or ``None``.
        autocast_dtype: ``torch.bfloat16`` for mixed precision (CUDA), ``None`` for fp32.
        channels_last: Feed NHWC batches (use with a ``channels_last`` model on CUDA).
        max_batches: Stop after this many batches.
        aux_weight: Weight of Inception's auxiliary loss.
        on_batch: Called with the batch index after each optimiser step (progress, tests).

    Returns:
        ``{"loss", "accuracy", "n"}``: mean loss per image, accuracy at sigmoid >= 0.5
        (training mode: dropout on, augmented images), images seen.
    """
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = steps = 0
    for batch, x, y in _batches(loader, device, channels_last=channels_last, max_batches=max_batches):
        with _autocast(device, autocast_dtype):
            output = model(x)
            loss = classification_loss(output, y, aux_weight=aux_weight, pos_weight=pos_weight)
        steps += 1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulated on the device: no host sync per batch.
        total += loss.detach().double() * y.numel()
        correct += _correct(logits_of(output), y)
        seen += y.numel()
        if on_batch is not None:
            on_batch(batch)
    if seen == 0:
        raise ValueError("the training loader yielded no batch")
    return {"loss": float(total) / seen, "accuracy": float(correct) / seen, "n": seen, "steps": steps}


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    pos_weight: float | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    max_batches: int | None = None,
) -> dict[str, float]:
    """Loss and accuracy of ``model`` on ``loader`` in eval mode (main logits only).

    ``pos_weight`` should be the training one, so the validation loss measures the
    objective being optimised (early stopping and ``best.pt`` compare it).

    Returns:
        ``{"loss", "accuracy", "n"}``.
    """
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for _, x, y in _batches(loader, device, channels_last=channels_last, max_batches=max_batches):
        with _autocast(device, autocast_dtype):
            logits = logits_of(model(x))
        loss = classification_loss(logits.float(), y, pos_weight=pos_weight)
        total += loss.double() * y.numel()
        correct += _correct(logits, y)
        seen += y.numel()
    if seen == 0:
        raise ValueError("the validation loader yielded no batch")
    return {"loss": float(total) / seen, "accuracy": float(correct) / seen, "n": seen}


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    max_batches: int | None = None,
) -> int:
    """Re-estimate the BatchNorm running statistics with the current weights ("precise BN").

    BatchNorm normalises each training batch by its own statistics but evaluates with
    running averages (momentum 0.1 per step). A network trained from scratch changes its
    activations' scale much faster than those averages follow: with a handful of steps per
    epoch its validation outputs come from statistics dozens of steps old, and it looks like
    chance for epochs after it has learned (measured on the demo: learned by step 9, validated
    at chance until step 27). One pass over the training images in training mode, with the
    running statistics reset and averaged equally over the pass (``momentum=None``), gives
    the statistics of the weights being validated. Nothing else changes: no gradients, and
    layers kept in eval mode by a frozen backbone are left alone.

    Args:
        model: The classifier (or any module), on ``device``.
        loader: Training images ``(images, labels, rows)``, without augmentation.
        device: Where to compute.
        autocast_dtype: As in :func:`train_one_epoch`.
        channels_last: As in :func:`train_one_epoch`.
        max_batches: Use at most this many batches.

    Returns:
        The number of BatchNorm layers recalibrated (0 for a network without BatchNorm,
        such as the study's VGG16, which is then left untouched).
    """
    was_training = model.training
    model.train()  # a frozen backbone's BatchNorm layers stay in eval mode (TumorClassifier.train)
    layers = [m for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    if not layers:
        model.train(was_training)
        return 0
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over this pass
    try:
        for batch, (x, _y, _) in enumerate(loader):
            if max_batches is not None and batch >= max_batches:
                break
            x = batch_to_device(x, device, channels_last=channels_last)
            with _autocast(device, autocast_dtype):
                model(x)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(layers)

