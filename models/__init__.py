"""Networks for tomoflow: VGG16 (with or without batch normalisation) / Inception v3 backbones, the study's dense heads, the classifier."""

from models.backbones import (
    INCEPTION_AUX_MIN_SIZE,
    BackboneSpec,
    SlicePreprocess,
    TumorClassifier,
    WeightsNotFoundError,
    backbone_spec,
    build_backbone,
    build_model,
    gray_to_rgb,
    imagenet_weights_file,
    inception_v3,
    load_weights_file,
    resolve_weights,
    vgg16,
    vgg16_bn,
    weights_transforms,
)
from models.heads import ClassifierOutput, build_head, classification_loss, logits_of

__all__ = [
    "INCEPTION_AUX_MIN_SIZE",
    "BackboneSpec",
    "ClassifierOutput",
    "SlicePreprocess",
    "TumorClassifier",
    "WeightsNotFoundError",
    "backbone_spec",
    "build_backbone",
    "build_head",
    "build_model",
    "classification_loss",
    "gray_to_rgb",
    "imagenet_weights_file",
    "inception_v3",
    "load_weights_file",
    "logits_of",
    "resolve_weights",
    "vgg16",
    "vgg16_bn",
    "weights_transforms",
]
