"""The checkpoint a run is evaluated with (models/training/checkpoint.py)."""

from __future__ import annotations

from pathlib import Path

from models.training.checkpoint import chosen_checkpoint


def test_best_checkpoint_is_chosen_over_last_and_last_without_best(tmp_path: Path) -> None:
    (tmp_path / "last.pt").write_bytes(b"last")
    assert chosen_checkpoint(tmp_path) == tmp_path / "last.pt"
    (tmp_path / "best.pt").write_bytes(b"best")
    assert chosen_checkpoint(str(tmp_path)) == tmp_path / "best.pt"


def test_min_steps_does_not_block_a_resume() -> None:
    """``train.min_steps`` only says when a run may end (like ``train.epochs``): a checkpoint written with
    another value, or before the field existed, resumes; a field that changes what an epoch computes does not."""
    from models.training.checkpoint import config_differences
    from tasks.core.config import TrainConfig

    current = TrainConfig.model_validate({"train": {"min_steps": 100}})
    saved = current.model_dump(mode="json")
    del saved["train"]["min_steps"]
    assert config_differences(saved, current) == []
    saved["train"]["lr"] = 0.5
    assert config_differences(saved, current) == ["train.lr"]
