"""The checkpoint a run is evaluated with (models/checkpoint.py)."""

from __future__ import annotations

from pathlib import Path

from models.checkpoint import chosen_checkpoint


def test_best_checkpoint_is_chosen_over_last_and_last_without_best(tmp_path: Path) -> None:
    (tmp_path / "last.pt").write_bytes(b"last")
    assert chosen_checkpoint(tmp_path) == tmp_path / "last.pt"
    (tmp_path / "best.pt").write_bytes(b"best")
    assert chosen_checkpoint(str(tmp_path)) == tmp_path / "best.pt"
