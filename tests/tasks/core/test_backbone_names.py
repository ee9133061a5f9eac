"""One list of backbone names (tasks/core/backbone_names.py): the configuration, the builders' facts and
the command line offer the same backbones."""

from __future__ import annotations

import argparse
from typing import get_args

from flows.cli import build_parser
from models.weights.fetch import cached_weights
from models.weights.resolve import backbone_spec
from tasks.core.backbone_names import BACKBONE_NAMES
from tasks.core.config import ModelConfig


def _choices(parser: argparse.ArgumentParser, *path: str, dest: str) -> tuple[str, ...]:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return tuple(next(a for a in parser._actions if a.dest == dest).choices)


def test_every_reader_offers_the_same_backbones() -> None:
    assert BACKBONE_NAMES == ("vgg16", "vgg16_bn", "inception_v3", "resnet18")
    assert get_args(ModelConfig.model_fields["model"].annotation) == BACKBONE_NAMES
    assert [backbone_spec(n).name for n in BACKBONE_NAMES] == list(BACKBONE_NAMES)  # facts for each
    assert [row["name"] for row in cached_weights(check=False)] == list(BACKBONE_NAMES)
    parser = build_parser()
    assert _choices(parser, "train", dest="model") == BACKBONE_NAMES
    assert _choices(parser, "weights", "fetch", dest="model") == BACKBONE_NAMES

