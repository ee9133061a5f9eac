"""VGG16 and Inception v3 backbones, offline-safe weights, and the tumour classifier.

Builders follow torchvision: keyword-only arguments, ``weights=`` selecting what to load,
and preprocessing taken from the weights enum (:func:`weights_transforms`). They differ in
one way on purpose: **nothing is ever downloaded.** ``weights="imagenet"`` reads the file
that torchvision would have downloaded from torchvision's own cache
(``torch.hub.get_dir()/checkpoints/<file name from the enum's URL>``) and raises
:class:`WeightsNotFoundError`, naming the file, the folder and the URL, when it's missing,
so a run fails while it is being configured rather than hanging on the network mid-flow.

``weights`` takes:
    ``"imagenet"`` (or the torchvision enum member): the ImageNet-1K weights from the cache.
        Not hash-checked, like torchvision's own cache loads.
    a path: a ``state_dict`` saved with ``torch.save`` (or a dict holding one under
        ``"state_dict"`` or ``"model"``), loaded with ``weights_only=True``. When the file
        name ends in torchvision's ``-<hex>.pth`` suffix, the hex must be the start of the
        file's SHA-256.
    ``None`` (or ``"none"``): train from scratch with torchvision's default initialisation,
        the baseline the study compares transfer learning against.

Feature extractors (:func:`build_backbone`):
    ``vgg16`` (and ``vgg16_bn``, the same with batch normalisation after every convolution):
        the convolutional base, torchvision's ``AdaptiveAvgPool2d((7, 7))`` and a
        flatten: 512 x 7 x 7 = 25088 features whatever the input size. That is the study's
        "new dense head after the convolutional base" (Keras' ``Flatten`` at 224 x 224 gives
        the same 25088), and it keeps VGG's spatial layout; the ImageNet fc6/fc7 layers are
        dropped. Note the ``dense4`` head then has a 25088 x 8192 first layer (205 M weights).
    ``inception_v3``: everything up to the 2048-d global-average-pooled features
        (``fc`` and its dropout removed). The AuxLogits branch keeps its pretrained
        convolutions and yields 768-d features in training mode; :class:`TumorClassifier`
        puts a new ``Linear(768, 1)`` on them. AuxLogits pools Mixed_6e's map with a 5 x 5
        window and then needs a 5 x 5 map, so it only runs for inputs of at least
        :data:`INCEPTION_AUX_MIN_SIZE` (299) pixels a side; below that :func:`build_model`
        disables it with a logged note and training uses the main loss only.

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

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import torch
import torchvision.models as tvm
from torch import Tensor, nn
from torchvision.models import Inception_V3_Weights, VGG16_BN_Weights, VGG16_Weights, WeightsEnum

from models.heads import ClassifierOutput, HeadKind, build_head, check_head_args, he_init_

__all__ = [
    "INCEPTION_AUX_FEATURES",
    "INCEPTION_AUX_MIN_SIZE",
    "BackboneName",
    "BackboneSpec",
    "SlicePreprocess",
    "TumorClassifier",
    "WeightsArg",
    "WeightsNotFoundError",
    "backbone_spec",
    "build_backbone",
    "build_model",
    "gray_to_rgb",
    "imagenet_weights_file",
    "inception_v3",
    "load_weights_file",
    "resolve_weights",
    "vgg16",
    "vgg16_bn",
    "weights_transforms",
]

log = logging.getLogger(__name__)

BackboneName = Literal["vgg16", "vgg16_bn", "inception_v3"]
WeightsArg = str | os.PathLike[str] | WeightsEnum | None

#: Width of the AuxLogits branch's features once its ImageNet ``fc`` is removed.
INCEPTION_AUX_FEATURES = 768

# torchvision's convention for content-addressed files: "<name>-<first hex digits of sha256>.pth".
_HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,64})\.pth$")
_KEYWORDS_IMAGENET = {"imagenet"}
_KEYWORDS_SCRATCH = {"none", "scratch"}
_ALTERNATIVES = "pass --weights PATH (a local state_dict file) or --weights none to train from scratch"


class WeightsNotFoundError(FileNotFoundError):
    """ImageNet weights were asked for but are not in torchvision's local cache."""


# --------------------------------------------------------------------------------------
# What each backbone is
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneSpec:
    """Facts about a backbone, read from its torchvision weights enum.

    Attributes:
        name: ``"vgg16"``, ``"vgg16_bn"`` or ``"inception_v3"``.
        imagenet: The torchvision weights enum member used for ``weights="imagenet"``.
        feature_size: Length of the feature vector :func:`build_backbone` returns.
        min_size: Smallest input side the network accepts (``meta["min_size"]``).
        native_size: Input side the ImageNet weights were evaluated at (the crop size).
        mean: Per-channel normalisation mean (RGB) of the enum's transforms.
        std: Per-channel normalisation std (RGB) of the enum's transforms.
    """

    name: str
    imagenet: WeightsEnum
    feature_size: int
    min_size: int
    native_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_IMAGENET: dict[str, WeightsEnum] = {
    "vgg16": VGG16_Weights.IMAGENET1K_V1,
    "vgg16_bn": VGG16_BN_Weights.IMAGENET1K_V1,
    "inception_v3": Inception_V3_Weights.IMAGENET1K_V1,
}
_FEATURE_SIZE = {"vgg16": 512 * 7 * 7, "vgg16_bn": 512 * 7 * 7, "inception_v3": 2048}


@cache
def backbone_spec(name: BackboneName) -> BackboneSpec:
    """Look up a backbone's :class:`BackboneSpec`.

    Raises:
        ValueError: ``name`` isn't a supported backbone.
    """
    if name not in _IMAGENET:
        raise ValueError(f"backbone {name!r} is not one of the allowed backbones {sorted(_IMAGENET)}")
    weights = _IMAGENET[name]
    preset = weights.transforms()
    return BackboneSpec(
        name=name,
        imagenet=weights,
        feature_size=_FEATURE_SIZE[name],
        min_size=max(weights.meta["min_size"]),
        native_size=int(preset.crop_size[0]),
        mean=tuple(float(v) for v in preset.mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in preset.std),  # type: ignore[arg-type]
    )


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


# --------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------


def gray_to_rgb(x: Tensor) -> Tensor:
    """Replicate a grayscale image to the three channels the networks expect.

    Args:
        x: ``(..., 1, H, W)`` or already ``(..., 3, H, W)``.

    Returns:
        A ``(..., 3, H, W)`` view sharing ``x``'s memory (``expand``, no copy); a 3-channel
        input is returned as is.

    Raises:
        ValueError: The channel dimension is neither 1 nor 3.
    """
    if x.ndim < 3 or x.shape[-3] not in (1, 3):
        raise ValueError(f"expected an image of shape (..., 1 or 3, H, W), got {tuple(x.shape)}")
    if x.shape[-3] == 3:
        return x
    return x.expand(*x.shape[:-3], 3, *x.shape[-2:])


def _normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    # Broadcasting a (..., 1, H, W) image against (3, 1, 1) statistics replicates it to
    # three channels and normalises in one pass, without materialising the copy first.
    mean = mean.to(device=x.device, dtype=x.dtype)
    std = std.to(device=x.device, dtype=x.dtype)
    return (x - mean) / std


class SlicePreprocess(nn.Module):
    """The weights' own normalisation, applied to grayscale slices.

    Turns ``(H, W)``, ``(1, H, W)``, ``(3, H, W)`` or batched ``(B, C, H, W)`` images,
    ``uint8`` (0-255) or float in [0, 1], into float tensors with three channels normalised
    by the ImageNet mean and std. It does no resizing or cropping: the slice stage decides
    the geometry (torchvision's centre crop would cut lesions off the slice edge).
    """

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        self.mean = mean
        self.std = std
        self.register_buffer("_mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std).view(3, 1, 1), persistent=False)

    def forward(self, img: Tensor) -> Tensor:
        """Normalise one image or a batch (see the class docstring)."""
        if img.ndim == 2:
            img = img.unsqueeze(0)
        if img.ndim < 3 or img.shape[-3] not in (1, 3):
            raise ValueError(f"expected an image of shape (H, W) or (..., 1 or 3, H, W), got {tuple(img.shape)}")
        if img.dtype == torch.uint8:
            img = img.to(torch.float32) / 255.0
        elif not img.is_floating_point():
            raise ValueError(f"expected a uint8 or floating-point image, got dtype {img.dtype}")
        return _normalize(img, self._mean, self._std)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}, gray -> 3 channels by replication"


def weights_transforms(name: BackboneName) -> SlicePreprocess:
    """Preprocessing for a backbone: the ImageNet weights enum's mean and std.

    The same preprocessing serves pretrained and scratch models, so the comparison
    between them isn't confounded by different inputs.

    Args:
        name: ``"vgg16"``, ``"vgg16_bn"`` or ``"inception_v3"``.

    Raises:
        ValueError: ``name`` isn't a supported backbone.
    """
    spec = backbone_spec(name)
    return SlicePreprocess(spec.mean, spec.std)


# --------------------------------------------------------------------------------------
# Weights: locate, verify, load
# --------------------------------------------------------------------------------------


def imagenet_weights_file(name: BackboneName) -> Path:
    """Where torchvision caches a backbone's ImageNet weights.

    ``torch.hub.get_dir()/checkpoints/<file name of the enum's URL>``, the place
    ``torch.hub.load_state_dict_from_url`` downloads to, e.g.
    ``~/.cache/torch/hub/checkpoints/vgg16-397923af.pth``; ``$TORCH_HOME`` moves it.
    """
    url = backbone_spec(name).imagenet.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def resolve_weights(name: BackboneName, weights: WeightsArg) -> Path | None:
    """Check a ``weights`` argument and say which file it will load, without loading it.

    Call it while validating a configuration, so that missing weights stop a run before
    any work; the builders call it too.

    Args:
        name: ``"vgg16"``, ``"vgg16_bn"`` or ``"inception_v3"``.
        weights: ``"imagenet"``, the torchvision enum member, ``None``/``"none"``, or a path.

    Returns:
        The file to load, or ``None`` for training from scratch.

    Raises:
        WeightsNotFoundError: ImageNet weights asked for but not in torchvision's cache.
        FileNotFoundError: A weights path that doesn't exist.
        ValueError: Unknown backbone, or a weights enum of another architecture.
    """
    spec = backbone_spec(name)
    if weights is None:
        return None
    if isinstance(weights, WeightsEnum):
        if weights != spec.imagenet:
            raise ValueError(f"weights {weights!r} are not supported for {name}; allowed: {spec.imagenet!r}")
        weights = "imagenet"
    if isinstance(weights, str) and weights.strip().lower() in _KEYWORDS_SCRATCH:
        return None
    if isinstance(weights, str) and weights.strip().lower() in _KEYWORDS_IMAGENET:
        path = imagenet_weights_file(name)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"ImageNet weights for {name} ({spec.imagenet!r}) are not in torchvision's cache: "
                f"expected the file {path.name!r} in the folder '{path.parent}' "
                "(torch.hub.get_dir()/checkpoints; set TORCH_HOME to move it). tomoflow never downloads "
                f"weights during a run: download {spec.imagenet.url} on a machine with internet access "
                f"and copy it into that folder, or {_ALTERNATIVES}."
            )
        return path
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file '{path}' for {name} does not exist; weights must be 'imagenet', 'none', "
            "or the path of a state_dict file"
        )
    return path


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def load_weights_file(path: str | os.PathLike[str], *, check_hash: bool = True) -> dict[str, Tensor]:
    """Load a ``state_dict`` from a file safely (``weights_only=True``, onto the CPU).

    Args:
        path: A file written by ``torch.save``: a ``state_dict``, or a checkpoint dict
            holding one under ``"state_dict"`` or ``"model"``.
        check_hash: When the file name ends in ``-<8 or more hex digits>.pth``
            (torchvision's convention), require them to be the start of the file's SHA-256.

    Returns:
        The ``state_dict``.

    Raises:
        ValueError: Hash mismatch, or the file doesn't hold a ``state_dict``.
    """
    path = Path(path)
    match = _HASH_SUFFIX.search(path.name) if check_hash else None
    if match:
        expected, actual = match.group(1), _sha256(path)
        if not actual.startswith(expected):
            raise ValueError(
                f"weights file '{path}': its name says its SHA-256 starts with {expected!r}, but the "
                f"file's SHA-256 is {actual!r} (starts with {actual[: len(expected)]!r}); the file is "
                "corrupt or mislabelled. Fetch it again, or rename it without the '-<hex>.pth' suffix "
                "if that suffix isn't a hash."
            )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for non-checkpoint files
        raise ValueError(f"weights file '{path}' could not be read as a PyTorch state_dict: {exc}") from exc
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping) and _is_state_dict(obj[key]):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        raise ValueError(
            f"weights file '{path}' holds a {type(obj).__name__}, not a state_dict (a dict of tensors, "
            "or a checkpoint with one under 'state_dict' or 'model')"
        )
    return dict(obj)


def _is_state_dict(obj: Mapping[Any, Any]) -> bool:
    return len(obj) > 0 and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _load_into(model: nn.Module, state: dict[str, Tensor], *, source: Path, arch: str) -> None:
    """Load ``state`` into ``model`` after checking keys and shapes, naming the file if not."""
    expected = model.state_dict()
    # Old BatchNorm checkpoints (such as the Google-ported Inception weights) predate the
    # num_batches_tracked buffer; BatchNorm's loader fills it in, so it may be absent.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        found = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": mismatched}
        problems = [f"{label} ({len(items)}): {items[:5]}" for label, items in found.items() if items]
        hint = ""
        if any(k.startswith(("backbone.", "head.")) for k in unexpected):
            hint = (
                " It looks like a tomoflow TumorClassifier checkpoint: load it with "
                "TumorClassifier.load_state_dict instead."
            )
        raise ValueError(
            f"weights file '{source}' does not match torchvision's {arch} architecture; "
            + "; ".join(problems)
            + "."
            + hint
        )
    model.load_state_dict(state, strict=False)


def _weights_state(name: BackboneName, weights: WeightsArg) -> tuple[dict[str, Tensor], Path] | None:
    path = resolve_weights(name, weights)
    if path is None:
        return None
    # The cache file's name carries torchvision's hash, but torchvision doesn't re-check
    # cached files either; explicit paths are checked.
    is_cache = isinstance(weights, WeightsEnum) or (
        isinstance(weights, str) and weights.strip().lower() in _KEYWORDS_IMAGENET
    )
    return load_weights_file(path, check_hash=not is_cache), path


# --------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------


def _vgg(name: Literal["vgg16", "vgg16_bn"], weights: WeightsArg, progress: bool) -> tvm.VGG:
    loaded = _weights_state(name, weights)
    model = getattr(tvm, name)(weights=None, progress=progress, init_weights=loaded is None)
    if loaded is not None:
        _load_into(model, loaded[0], source=loaded[1], arch=name)
    return model


def vgg16(*, weights: WeightsArg = "imagenet", progress: bool = False) -> tvm.VGG:
    """torchvision's VGG16 (with its 1000-class classifier), with offline-safe weights.

    Args:
        weights: ``"imagenet"``, ``None`` (scratch) or a path; see the module docstring.
        progress: Accepted for torchvision's signature; nothing is downloaded.

    Raises:
        WeightsNotFoundError: ImageNet weights not in torchvision's cache.
        FileNotFoundError: A weights path that doesn't exist.
        ValueError: A file that fails its hash check or doesn't fit the architecture.
    """
    return _vgg("vgg16", weights, progress)


def vgg16_bn(*, weights: WeightsArg = "imagenet", progress: bool = False) -> tvm.VGG:
    """torchvision's VGG16 with batch normalisation (``vgg16_bn``), with offline-safe weights.

    The from-scratch baseline that trains (see the module docstring); its ImageNet file is
    ``vgg16_bn-6c64b313.pth`` in torchvision's cache. Arguments and errors as :func:`vgg16`.
    """
    return _vgg("vgg16_bn", weights, progress)


def inception_v3(
    *, weights: WeightsArg = "imagenet", progress: bool = False, aux_logits: bool = True
) -> tvm.Inception3:
    """torchvision's Inception v3 (1000 classes), with offline-safe weights.

    Built with ``transform_input=True`` for pretrained and scratch alike (see the module
    docstring), so it takes ImageNet-normalised input.

    Args:
        weights: ``"imagenet"``, ``None`` (scratch) or a path; see the module docstring.
        progress: Accepted for torchvision's signature; nothing is downloaded.
        aux_logits: Keep the AuxLogits branch. Without it, ``AuxLogits.*`` keys in the
            weights file are ignored.

    Raises:
        WeightsNotFoundError: ImageNet weights not in torchvision's cache.
        FileNotFoundError: A weights path that doesn't exist.
        ValueError: A file that fails its hash check or doesn't fit the architecture.
    """
    loaded = _weights_state("inception_v3", weights)
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
        _load_into(model, state, source=source, arch="inception_v3")
    return model


def build_backbone(
    name: BackboneName, *, weights: WeightsArg, aux_logits: bool = True, progress: bool = False
) -> tuple[nn.Module, int]:
    """Build a feature extractor without its ImageNet classifier.

    Args:
        name: ``"vgg16"`` or ``"vgg16_bn"`` (25088 features), or ``"inception_v3"`` (2048 features).
        weights: ``"imagenet"``, ``None`` (scratch) or a path; see the module docstring.
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
    else:
        model = inception_v3(weights=weights, progress=progress, aux_logits=aux_logits)
        model.fc = nn.Identity()
        # The heads bring their own dropout.
        model.dropout = nn.Identity()
        if model.AuxLogits is not None:
            model.AuxLogits.fc = nn.Identity()
    return model, spec.feature_size


def _image_size(spec: BackboneSpec, image_size: int | tuple[int, int]) -> tuple[int, int]:
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


# --------------------------------------------------------------------------------------
# Backbone + head
# --------------------------------------------------------------------------------------


class TumorClassifier(nn.Module):
    """A backbone, a dense head with one logit, and (Inception) an auxiliary head.

    ``forward`` takes float images ``(B, 3, H, W)`` already normalised by
    :func:`weights_transforms`, or grayscale ``(B, 1, H, W)`` in [0, 1], which it replicates
    and normalises on the device (identical result, a third of the host-to-device traffic).
    It returns logits ``(B,)``; in training mode with an auxiliary head it returns a
    :class:`~models.heads.ClassifierOutput` ``(logits, aux_logits)`` instead, as torchvision's
    Inception does. Use :func:`~models.heads.classification_loss` for either.

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
    return TumorClassifier(
        backbone, head_module, arch=model, image_size=size, aux_head=aux_head, config=config
    )
