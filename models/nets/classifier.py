"""The tumour classifier: a backbone (:mod:`models.nets.backbones`), a dense head with one logit
(:mod:`models.nets.heads`) and, for Inception v3, an auxiliary head; :func:`build_model` builds it.

Why ``vgg16_bn`` is offered. VGG16 has no normalisation layers; from its random (Kaiming)
initialisation it learns slowly at the study's transfer-learning settings (SGD, learning
rate 0.001): on a small synthetic set it stays at chance for about a dozen epochs before
it moves. Batch normalisation keeps every layer's activations on scale, so the same network
trains from scratch in a few epochs at a learning rate suited to random initialisation
(0.01 for the backbone; the new dense head, with 25088 inputs, keeps 0.001). It is the
sound from-scratch baseline when ImageNet weights are absent (the
``demo`` preset falls back to it); runs that start from ImageNet keep the study's VGG16.

Inputs: both networks take 3-channel images normalised with the ImageNet mean and std of
the weights enum's transforms, for pretrained *and* scratch models, so the two are fed
identical tensors. Inception v3 is always built with ``transform_input=True`` (which
torchvision switches on for its pretrained weights, ported from TensorFlow's [-1, 1]
convention); doing the same for scratch keeps the two architectures identical.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from models.nets.backbones import INCEPTION_AUX_FEATURES, INCEPTION_AUX_MIN_SIZE, build_backbone
from models.nets.heads import ClassifierOutput, HeadKind, build_head, check_head_args, he_init_
from models.weights.transfer import apply_transfer, load_source
from models.weights.resolve import BackboneSpec, WeightsArg, backbone_spec, resolve_weights
from tasks.core.backbone_names import BackboneName

__all__ = ["TumorClassifier", "build_model"]

log = logging.getLogger(__name__)


def _normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    # Broadcasting a (..., 1, H, W) image against (3, 1, 1) statistics replicates it to
    # three channels and normalises in one pass, without materialising the copy first.
    mean = mean.to(device=x.device, dtype=x.dtype)
    std = std.to(device=x.device, dtype=x.dtype)
    return (x - mean) / std


def _image_size(spec: BackboneSpec, image_size: int | tuple[int, int]) -> tuple[int, int]:
    """``image_size`` as ``(height, width)``, checked against the backbone's minimum."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in size):
        raise ValueError(f"image_size must be an int or an (height, width) pair of ints, got {image_size!r}")
    if min(size) < spec.min_size:
        raise ValueError(
            f"image_size {image_size!r} is too small for {spec.name}: the minimum input size is "
            f"{spec.min_size}x{spec.min_size} ({spec.imagenet!r}.meta['min_size']); "
            f"its ImageNet weights were trained at {spec.native_size}"
        )
    return size  # type: ignore[return-value]


class TumorClassifier(nn.Module):
    """A backbone, a dense head with one logit, and (Inception) an auxiliary head.

    ``forward`` takes float images ``(B, 3, H, W)`` already normalised with the backbone's
    ImageNet mean and std (:func:`backbone_spec`), or grayscale ``(B, 1, H, W)`` in [0, 1], which it replicates
    and normalises on the device (identical result, a third of the host-to-device traffic).
    It returns logits ``(B,)``; in training mode with an auxiliary head it returns a
    :class:`~models.nets.heads.ClassifierOutput` ``(logits, aux_logits)`` instead, as torchvision's
    Inception does. Use :func:`~models.nets.heads.classification_loss` for either.

    ``set_backbone_trainable(False)`` freezes the backbone, BatchNorm statistics included
    (its BatchNorm layers stay in eval mode through ``train()``, as Keras does for a
    non-trainable base), so only the new layers learn; ``True`` unfreezes it for fine-tuning
    at a lower learning rate (give :meth:`backbone_parameters` their own optimiser group).

    Attributes:
        config: The :func:`build_model` arguments that rebuild this architecture
            (``build_model(**config, weights=None)`` then ``load_state_dict``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        *,
        arch: BackboneName,
        image_size: tuple[int, int],
        aux_head: nn.Module | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        spec = backbone_spec(arch)
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.arch = arch
        self.image_size = image_size
        self.config: dict[str, Any] = dict(config or {})
        self._min_size = spec.min_size
        self._backbone_trainable = True
        self.register_buffer("_mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor | ClassifierOutput:
        """Logits ``(B,)``, or ``ClassifierOutput`` in training with an auxiliary head."""
        if x.ndim != 4 or x.shape[1] not in (1, 3) or not x.is_floating_point():
            raise ValueError(
                f"expected a float tensor of shape (B, 1 or 3, H, W), got {x.dtype} {tuple(x.shape)}"
            )
        height, width = x.shape[-2:]
        if min(height, width) < self._min_size:
            raise ValueError(
                f"input {height}x{width} is below {self.arch}'s minimum of {self._min_size}x{self._min_size}"
            )
        if self.training and self.aux_head is not None and min(height, width) < INCEPTION_AUX_MIN_SIZE:
            raise ValueError(
                f"input {height}x{width} is too small for Inception's auxiliary classifier (needs at least "
                f"{INCEPTION_AUX_MIN_SIZE}x{INCEPTION_AUX_MIN_SIZE}); build the model with that image_size "
                "so the auxiliary head is left out"
            )
        if x.shape[1] == 1:
            x = _normalize(x, self._mean, self._std)
        features = self.backbone(x)
        if isinstance(features, tuple):  # torchvision's InceptionOutputs in training mode
            features, aux_features = features
        else:
            aux_features = None
        logits = self.head(features).squeeze(-1)
        if self.training and self.aux_head is not None:
            if aux_features is None:
                raise RuntimeError("the backbone returned no auxiliary features in training mode")
            return ClassifierOutput(logits, self.aux_head(aux_features).squeeze(-1))
        return logits

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The backbone's parameters (pretrained ones, when built with weights)."""
        return list(self.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        """The new layers' parameters: the head and, for Inception, the auxiliary head."""
        params = list(self.head.parameters())
        if self.aux_head is not None:
            params += list(self.aux_head.parameters())
        return params

    @property
    def backbone_trainable(self) -> bool:
        """Whether the backbone is being trained (see :meth:`set_backbone_trainable`)."""
        return self._backbone_trainable

    def set_backbone_trainable(self, flag: bool) -> None:
        """Freeze (``False``) or unfreeze (``True``) the backbone, BatchNorm statistics included."""
        self._backbone_trainable = bool(flag)
        for param in self.backbone.parameters():
            param.requires_grad_(self._backbone_trainable)
        self.train(self.training)

    def train(self, mode: bool = True) -> TumorClassifier:
        """Set training mode, keeping a frozen backbone's BatchNorm layers in eval mode."""
        super().train(mode)
        if mode and not self._backbone_trainable:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


def build_model(
    *,
    model: BackboneName = "vgg16",
    weights: WeightsArg = "imagenet",
    head: HeadKind = "single",
    image_size: int | tuple[int, int] = 224,
    dropout: float = 0.5,
    aux_logits: bool = True,
    seed: int | None = None,
    transfer: str = "all",
) -> TumorClassifier:
    """Build a tumour / no-tumour classifier: backbone + dense head with one logit.

    Every argument is checked, and the weights file located, before any network is built,
    so a bad configuration fails fast.

    Args:
        model: ``"vgg16"``, ``"vgg16_bn"`` (VGG16 with batch normalisation, the from-scratch
            baseline) or ``"inception_v3"``.
        weights: ``"imagenet"`` (torchvision's local cache, never the network), ``None`` /
            ``"none"`` (scratch), or the path of a state_dict file.
        head: ``"single"`` (100 units) or ``"dense4"`` (8192, 2048, 512, 128 units).
        image_size: Input side, or ``(height, width)``; at least 32 for VGG16 and 75 for
            Inception v3.
        dropout: Dropout probability in the head.
        aux_logits: Inception v3: add the auxiliary head (``Linear(768, 1)`` on AuxLogits'
            pooled features), trained with weight 0.4. It is disabled, with a logged note,
            when ``image_size`` is below :data:`INCEPTION_AUX_MIN_SIZE`. Ignored for VGG16.
        seed: Seed for the random initialisation of the new layers (and of a scratch
            backbone); ``None`` uses torch's global generator. The global generator's state
            is left untouched when a seed is given.
        transfer: With ``weights`` naming a tomoflow run or checkpoint: ``"backbone"`` or
            ``"all"`` (backbone and heads, see :mod:`models.weights.transfer`). Ignored otherwise.

    Returns:
        The :class:`TumorClassifier`, in training mode, backbone trainable.

    Raises:
        ValueError: Unknown model or head, bad dropout, image size below the minimum, or a
            weights file that fails its hash check or doesn't fit the architecture.
        WeightsNotFoundError: ImageNet weights not in torchvision's cache.
        FileNotFoundError: A weights path that doesn't exist.
    """
    spec = backbone_spec(model)
    size = _image_size(spec, image_size)
    check_head_args(head, dropout=dropout)
    resolve_weights(model, weights)
    source = load_source(weights)
    if source is not None:
        weights = None  # the backbone is built bare, then the source copied in below
    use_aux = model == "inception_v3" and aux_logits
    if use_aux and min(size) < INCEPTION_AUX_MIN_SIZE:
        log.info(
            "inception_v3: auxiliary classifier disabled for image_size %s: AuxLogits needs inputs of at "
            "least %dx%d; training uses the main loss only",
            image_size,
            INCEPTION_AUX_MIN_SIZE,
            INCEPTION_AUX_MIN_SIZE,
        )
        use_aux = False
    config = {
        "model": model,
        "head": head,
        "image_size": image_size,
        "dropout": dropout,
        "aux_logits": use_aux,
    }
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        backbone, n_features = build_backbone(model, weights=weights, aux_logits=use_aux)
        head_module = build_head(head, n_features, dropout=dropout)
        aux_head = None
        if use_aux:
            aux_head = he_init_(nn.Linear(INCEPTION_AUX_FEATURES, 1))
    classifier = TumorClassifier(
        backbone, head_module, arch=model, image_size=size, aux_head=aux_head, config=config
    )
    if source is not None:
        loaded = apply_transfer(classifier, source[0], mode=transfer, source=source[1])  # type: ignore[arg-type]
        log.info("started from the tomoflow model '%s' (%s)", source[1], ", ".join(loaded))
    return classifier
