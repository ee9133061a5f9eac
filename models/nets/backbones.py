"""VGG16, Inception v3 and ResNet-18 feature extractors, built in torchvision's style.

Builders follow torchvision: keyword-only arguments, ``weights=`` selecting what to load
(``"imagenet"`` from torchvision's local cache, never the network; ``None`` for scratch; or
a path), and the normalisation taken from the weights enum (:func:`backbone_spec`).
Locating, verifying and loading the weights lives in :mod:`models.weights.resolve`.

Feature extractors (:func:`build_backbone`):
    ``vgg16`` (and ``vgg16_bn``, the same with batch normalisation after every convolution):
        the convolutional base, torchvision's ``AdaptiveAvgPool2d((7, 7))`` and a
        flatten: 512 x 7 x 7 = 25088 features whatever the input size. That is the study's
        "new dense head after the convolutional base" (Keras' ``Flatten`` at 224 x 224 gives
        the same 25088), and it keeps VGG's spatial layout; the ImageNet fc6/fc7 layers are
        dropped. Note the ``dense4`` head then has a 25088 x 8192 first layer (205 M weights).
    ``inception_v3``: everything up to the 2048-d global-average-pooled features
        (``fc`` and its dropout removed). The AuxLogits branch keeps its pretrained
        convolutions and yields 768-d features in training mode; :class:`~models.nets.classifier.TumorClassifier`
        puts a new ``Linear(768, 1)`` on them. AuxLogits pools Mixed_6e's map with a 5 x 5
        window and then needs a 5 x 5 map, so it only runs for inputs of at least
        :data:`INCEPTION_AUX_MIN_SIZE` (299) pixels a side; below that :func:`~models.nets.classifier.build_model`
        disables it with a logged note and training uses the main loss only.
    ``resnet18``: everything up to the 512-d global-average-pooled features (``fc`` removed).
        The cheaper backbone (11 M weights): from random initialisation on the CPU it learns
        ``moderate`` from about a thousand patients, where VGG16 with batch normalisation stayed
        at the constant model on 400 (``configs/cpu-scratch.yaml``, ``bench/transfer.py``).
"""

from __future__ import annotations

from typing import Literal

import torchvision.models as tvm
from torch import nn

from models.weights.resolve import WeightsArg, backbone_spec, load_into, weights_state
from tasks.core.backbone_names import BackboneName

__all__ = [
    "INCEPTION_AUX_FEATURES",
    "INCEPTION_AUX_MIN_SIZE",
    "build_backbone",
    "inception_v3",
    "resnet18",
    "vgg16",
    "vgg16_bn",
]

#: Width of the AuxLogits branch's features once its ImageNet ``fc`` is removed.
INCEPTION_AUX_FEATURES = 768


def _inception_mixed6_size(side: int) -> int:
    """Side of Inception v3's Mixed_6e map (the AuxLogits input) for an input side."""
    side = (side - 3) // 2 + 1  # Conv2d_1a_3x3, stride 2
    side -= 2  # Conv2d_2a_3x3
    side = (side - 3) // 2 + 1  # maxpool1
    side -= 2  # Conv2d_4a_3x3
    side = (side - 3) // 2 + 1  # maxpool2
    return (side - 3) // 2 + 1  # Mixed_6a, stride 2


def _inception_aux_runs(side: int) -> bool:
    # AuxLogits: avg_pool2d(5, stride=3), then a 5x5 convolution without padding.
    mixed6 = _inception_mixed6_size(side)
    return mixed6 >= 5 and (mixed6 - 5) // 3 + 1 >= 5


#: Smallest input side for which Inception v3's AuxLogits branch can run (299).
INCEPTION_AUX_MIN_SIZE: int = next(s for s in range(75, 2048) if _inception_aux_runs(s))


def _torchvision(name: Literal["vgg16", "vgg16_bn", "resnet18"], weights: WeightsArg, progress: bool) -> nn.Module:
    """torchvision's ``name`` built bare, then the resolved weights loaded (VGG skips its init when it loads)."""
    loaded = weights_state(name, weights)
    init = {"init_weights": loaded is None} if name.startswith("vgg") else {}
    model = getattr(tvm, name)(weights=None, progress=progress, **init)
    if loaded is not None:
        load_into(model, loaded[0], source=loaded[1], arch=name)
    return model


def vgg16(*, weights: WeightsArg = "imagenet", progress: bool = False) -> tvm.VGG:
    """torchvision's VGG16 (with its 1000-class classifier), with offline-safe weights.

    Args:
        weights: ``"imagenet"``, ``None`` (scratch) or a path; see :mod:`models.weights.resolve`.
        progress: Accepted for torchvision's signature; nothing is downloaded.

    Raises:
        WeightsNotFoundError: ImageNet weights not in torchvision's cache.
        FileNotFoundError: A weights path that doesn't exist.
        ValueError: A file that fails its hash check or doesn't fit the architecture.
    """
    return _torchvision("vgg16", weights, progress)  # type: ignore[return-value]


def vgg16_bn(*, weights: WeightsArg = "imagenet", progress: bool = False) -> tvm.VGG:
    """torchvision's VGG16 with batch normalisation (``vgg16_bn``), with offline-safe weights.

    The from-scratch baseline that trains (see :mod:`models.nets.classifier`); its ImageNet file is
    ``vgg16_bn-6c64b313.pth`` in torchvision's cache. Arguments and errors as :func:`vgg16`.
    """
    return _torchvision("vgg16_bn", weights, progress)  # type: ignore[return-value]


def inception_v3(
    *, weights: WeightsArg = "imagenet", progress: bool = False, aux_logits: bool = True
) -> tvm.Inception3:
    """torchvision's Inception v3 (1000 classes), with offline-safe weights.

    Built with ``transform_input=True`` for pretrained and scratch alike (see the module
    docstring), so it takes ImageNet-normalised input.

    Args:
        weights: ``"imagenet"``, ``None`` (scratch) or a path; see :mod:`models.weights.resolve`.
        progress: Accepted for torchvision's signature; nothing is downloaded.
        aux_logits: Keep the AuxLogits branch. Without it, ``AuxLogits.*`` keys in the
            weights file are ignored.

    Raises:
        WeightsNotFoundError: ImageNet weights not in torchvision's cache.
        FileNotFoundError: A weights path that doesn't exist.
        ValueError: A file that fails its hash check or doesn't fit the architecture.
    """
    loaded = weights_state("inception_v3", weights)
    model = tvm.inception_v3(
        weights=None,
        progress=progress,
        aux_logits=aux_logits,
        transform_input=True,
        init_weights=loaded is None,
    )
    if loaded is not None:
        state, source = loaded
        if not aux_logits:
            state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
        load_into(model, state, source=source, arch="inception_v3")
    return model


def resnet18(*, weights: WeightsArg = "imagenet", progress: bool = False) -> tvm.ResNet:
    """torchvision's ResNet-18 (with its 1000-class ``fc``), with offline-safe weights.

    Its ImageNet file is ``resnet18-f37072fd.pth`` in torchvision's cache. Arguments and errors
    as :func:`vgg16`.
    """
    return _torchvision("resnet18", weights, progress)  # type: ignore[return-value]


def build_backbone(
    name: BackboneName, *, weights: WeightsArg, aux_logits: bool = True, progress: bool = False
) -> tuple[nn.Module, int]:
    """Build a feature extractor without its ImageNet classifier.

    Args:
        name: ``"vgg16"`` or ``"vgg16_bn"`` (25088 features), ``"inception_v3"`` (2048 features) or
            ``"resnet18"`` (512 features).
        weights: ``"imagenet"``, ``None`` (scratch) or a path; see :mod:`models.weights.resolve`.
        aux_logits: Inception v3 only: keep the AuxLogits branch, which then returns
            :data:`INCEPTION_AUX_FEATURES`-d features in training mode, as the second item of
            torchvision's ``InceptionOutputs``. Ignored for VGG16, which has none.
        progress: Accepted for torchvision's signature; nothing is downloaded.

    Returns:
        ``(module, feature_size)``. The module maps ``(B, 3, H, W)`` normalised images to
        ``(B, feature_size)`` features.

    Raises:
        ValueError: Unknown ``name``, or weights that don't fit (see :func:`vgg16`).
        WeightsNotFoundError, FileNotFoundError: See :func:`resolve_weights`.
    """
    spec = backbone_spec(name)
    if name in ("vgg16", "vgg16_bn"):
        builder = vgg16 if name == "vgg16" else vgg16_bn
        model: nn.Module = builder(weights=weights, progress=progress)
        model.classifier = nn.Identity()
    elif name == "resnet18":
        model = resnet18(weights=weights, progress=progress)
        model.fc = nn.Identity()
    else:
        model = inception_v3(weights=weights, progress=progress, aux_logits=aux_logits)
        model.fc = nn.Identity()
        # The heads bring their own dropout.
        model.dropout = nn.Identity()
        if model.AuxLogits is not None:
            model.AuxLogits.fc = nn.Identity()
    return model, spec.feature_size

