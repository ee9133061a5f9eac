"""Backbone facts and offline-safe weights: locate, verify and load, never download.

Builders (:mod:`models.nets.backbones`) follow torchvision's ``weights=`` argument, with one
difference on purpose: **nothing is ever downloaded.** ``weights="imagenet"`` reads the
file that torchvision would have downloaded from torchvision's own cache
(``torch.hub.get_dir()/checkpoints/<file name from the enum's URL>``) and raises
:class:`WeightsNotFoundError`, naming the file, the folder and the URL, when it's missing,
so a run fails while it is being configured rather than hanging on the network mid-flow.

``weights`` takes (read once by :meth:`tasks.core.weights_setting.WeightsSetting.verify`, whose
kind each branch below is):
    ``"imagenet"`` (or the torchvision enum member): the ImageNet-1K weights from the cache.
        Not hash-checked, like torchvision's own cache loads.
    a tomoflow run folder or its ``best.pt``: handled by :mod:`models.weights.transfer` (backbone and
        head of an earlier tomoflow model); :func:`resolve_weights` returns its checkpoint.
    a path: a ``state_dict`` saved with ``torch.save`` (or a dict holding one under
        ``"state_dict"`` or ``"model"``), loaded with ``weights_only=True``. When the file
        name ends in torchvision's ``-<hex>.pth`` suffix, the hex must be the start of the
        file's SHA-256.
    ``None`` (or ``"none"``): train from scratch with torchvision's default initialisation,
        the baseline the study compares transfer learning against.

:func:`backbone_spec` reads each backbone's facts (input sizes, normalisation) from its
torchvision weights enum, as torchvision's ``models/_api.py`` keeps them with the weights.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models import (
    Inception_V3_Weights,
    ResNet18_Weights,
    VGG16_BN_Weights,
    VGG16_Weights,
    WeightsEnum,
)

from tasks.core.backbone_names import BACKBONE_NAMES, BackboneName
from tasks.core.digest import sha256_file
from tasks.core.weights_setting import WEIGHTS_CHOICES, WeightsSetting

__all__ = [
    "BackboneSpec",
    "WeightsArg",
    "WeightsNotFoundError",
    "backbone_spec",
    "imagenet_weights_file",
    "load_into",
    "load_weights_file",
    "missing_weights_message",
    "resolve_weights",
    "weights_state",
]

WeightsArg = str | os.PathLike[str] | WeightsEnum | None

# torchvision's convention for content-addressed files: "<name>-<first hex digits of sha256>.pth".
_HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,64})\.pth$")


class WeightsNotFoundError(FileNotFoundError):
    """ImageNet weights were asked for but are not in torchvision's local cache."""


@dataclass(frozen=True)
class BackboneSpec:
    """Facts about a backbone, read from its torchvision weights enum.

    Attributes:
        name: ``"vgg16"``, ``"vgg16_bn"``, ``"inception_v3"`` or ``"resnet18"``.
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
    "resnet18": ResNet18_Weights.IMAGENET1K_V1,
}
_FEATURE_SIZE = {"vgg16": 512 * 7 * 7, "vgg16_bn": 512 * 7 * 7, "inception_v3": 2048, "resnet18": 512}


@cache
def backbone_spec(name: BackboneName) -> BackboneSpec:
    """Look up a backbone's :class:`BackboneSpec`.

    Raises:
        ValueError: ``name`` isn't a supported backbone.
    """
    if name not in BACKBONE_NAMES:
        raise ValueError(f"backbone {name!r} is not one of the allowed backbones {sorted(BACKBONE_NAMES)}")
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
        name: ``"vgg16"``, ``"vgg16_bn"``, ``"inception_v3"`` or ``"resnet18"``.
        weights: ``"imagenet"``, the torchvision enum member, ``None``/``"none"``, or a path
            (read by :meth:`~tasks.core.weights_setting.WeightsSetting.verify`).

    Returns:
        The file to load, or ``None`` for training from scratch.

    Raises:
        WeightsNotFoundError: ImageNet weights asked for but not in torchvision's cache.
        FileNotFoundError: A weights path that doesn't exist.
        ValueError: Unknown backbone, or a weights enum of another architecture.
    """
    spec = backbone_spec(name)
    if isinstance(weights, WeightsEnum):
        if weights != spec.imagenet:
            raise ValueError(f"weights {weights!r} are not supported for {name}; allowed: {spec.imagenet!r}")
        weights = "imagenet"
    setting = WeightsSetting.verify(weights)
    if setting.kind == "none":
        return None
    if setting.kind == "imagenet":
        path = imagenet_weights_file(name)
        if not path.is_file():
            raise WeightsNotFoundError(missing_weights_message(name, path))
        return path
    if setting.kind == "run":
        return setting.checkpoint()  # a tomoflow run folder or checkpoint (models.weights.transfer loads it)
    assert setting.path is not None
    if not setting.path.is_file():
        raise FileNotFoundError(f"weights file '{setting.path}' for {name} does not exist; weights must be {WEIGHTS_CHOICES}")
    return setting.path


def missing_weights_message(name: BackboneName, path: Path) -> str:
    """What to do when ImageNet weights are not cached: a few whole sentences, under 600 characters.

    Names the file and the folder it goes in, ``tomoflow weights fetch``, the alternatives at
    the command line, and the deployment parameter that trains from scratch instead.
    """
    url = backbone_spec(name).imagenet.url
    return (
        f"ImageNet weights for {name} are not in torchvision's cache: expected {path.name} in {path.parent} "
        "(TORCH_HOME moves it). Runs never download: run 'tomoflow weights fetch' where the network reaches "
        f"{url}, or copy that file there. Else pass --weights PATH (a state_dict or a tomoflow run) or "
        "--weights none to train from scratch; a deployment does so with the parameter "
        'config={"model":{"weights":"none"}}.'
    )


def unreadable_weights_message(path: str | os.PathLike[str], exc: BaseException) -> str:
    """One line for a ``--weights`` file that ``torch.load(weights_only=True)`` cannot read."""
    return (f"weights file '{path}' is not a PyTorch state_dict or tomoflow checkpoint that can be read safely "
            f"({type(exc).__name__}); a file holding pickled Python objects (a whole model) is never loaded. Give a "
            "tomoflow run folder (tomoflow train --out RUN), its best.pt, a file saved with "
            "torch.save(model.state_dict(), path), imagenet or none")


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
        expected, actual = match.group(1), sha256_file(path)
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
        # Our line, not torch's: its message advises weights_only=False, which would run the file's code.
        raise ValueError(unreadable_weights_message(path, exc)) from None
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


def load_into(model: nn.Module, state: dict[str, Tensor], *, source: Path, arch: str) -> None:
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
                " It looks like a tomoflow TumorClassifier state: pass its run folder or best.pt "
                "as --weights to start from it (see --transfer)."
            )
        raise ValueError(
            f"weights file '{source}' does not match torchvision's {arch} architecture; "
            + "; ".join(problems)
            + "."
            + hint
        )
    model.load_state_dict(state, strict=False)


def weights_state(name: BackboneName, weights: WeightsArg) -> tuple[dict[str, Tensor], Path] | None:
    """The ``state_dict`` a ``weights`` argument selects and its file, or ``None`` for scratch."""
    path = resolve_weights(name, weights)
    if path is None:
        return None
    # The cache file's name carries torchvision's hash, but torchvision doesn't re-check
    # cached files either; explicit paths are checked.
    is_cache = isinstance(weights, WeightsEnum) or WeightsSetting.verify(weights).kind == "imagenet"
    return load_weights_file(path, check_hash=not is_cache), path

