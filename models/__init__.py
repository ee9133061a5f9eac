"""Networks for tomoflow: VGG16 (with or without batch normalisation) / Inception v3 backbones, the study's dense heads, the classifier."""

from models.backbones import INCEPTION_AUX_MIN_SIZE, build_backbone, inception_v3, vgg16, vgg16_bn
from models.classifier import TumorClassifier, build_model
from models.heads import ClassifierOutput, build_head, classification_loss, logits_of
from models.weights import (
    BackboneSpec,
    WeightsNotFoundError,
    backbone_spec,
    imagenet_weights_file,
    load_weights_file,
    resolve_weights,
)

__all__ = [
    "INCEPTION_AUX_MIN_SIZE",
    "BackboneSpec",
    "ClassifierOutput",
    "TumorClassifier",
    "WeightsNotFoundError",
    "backbone_spec",
    "build_backbone",
    "build_head",
    "build_model",
    "classification_loss",
    "imagenet_weights_file",
    "inception_v3",
    "load_weights_file",
    "logits_of",
    "resolve_weights",
    "vgg16",
    "vgg16_bn",
]
