"""Resume checks of the run folder's checkpoints (models/training/checkpoint.py)."""

from __future__ import annotations

from models.training.checkpoint import config_differences
from tasks.core.config import TrainConfig


def test_min_steps_does_not_block_a_resume() -> None:
    """``train.min_steps`` only says when a run may end (like ``train.epochs``): a checkpoint written with
    another value, or before the field existed, resumes; a field that changes what an epoch computes does not."""

    current = TrainConfig.model_validate({"train": {"min_steps": 100}})
    saved = current.model_dump(mode="json")
    del saved["train"]["min_steps"]
    assert config_differences(saved, current) == []
    saved["train"]["lr"] = 0.5
    assert config_differences(saved, current) == ["train.lr"]
