"""Presets: a fixed choice in the run form, refused with the known ones, and explicit config wins."""

from __future__ import annotations

from typing import get_args

import pytest

from tasks.core.config import PipelineConfig
from tasks.core.presets import PresetName, check_preset, list_presets, pipeline_config


def test_preset_choice_matches_the_files() -> None:
    assert sorted(get_args(PresetName)) == list_presets()


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown preset 'demo2': choose one of cpu-scratch, demo, m1-adam"):
        check_preset("demo2")


def test_explicit_config_wins_over_the_preset() -> None:
    cfg = pipeline_config(preset="demo", base={"train": {"epochs": 5}}, data_root="/d", output_root="/o")
    assert cfg.train.epochs == 5
    assert cfg.train.image_size == 64  # the rest of the preset still applies
    # A model given whole counts only for the fields it set.
    cfg = pipeline_config(preset="demo", base=PipelineConfig.model_validate({"train": {"epochs": 7}}))
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.slices.image_size) == (7, 16, 96)
