"""The backbones tomoflow builds, by name: the one list the configuration, the builders, the weights
cache and the command line read."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["BACKBONE_NAMES", "BackboneName"]

#: ``vgg16``, ``vgg16_bn`` (VGG16 with batch normalisation, the from-scratch baseline), ``inception_v3`` and
#: ``resnet18`` (the cheaper backbone the CPU recipe trains).
BackboneName = Literal["vgg16", "vgg16_bn", "inception_v3", "resnet18"]
BACKBONE_NAMES: tuple[BackboneName, ...] = get_args(BackboneName)
