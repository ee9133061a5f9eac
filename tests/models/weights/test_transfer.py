"""An earlier tomoflow run as the starting point: which checkpoint it names and what a bad one says
(models/weights/transfer.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from models.weights.transfer import load_source


def test_a_pickled_model_in_a_run_folder_is_refused_without_torchs_advice(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    torch.save(nn.Linear(2, 2), run / "best.pt")
    with pytest.raises(ValueError) as caught:
        load_source(str(run))
    assert "weights_only" not in str(caught.value) and str(run / "best.pt") in str(caught.value)


def test_a_run_folder_is_read_from_best_then_last_and_other_settings_are_not_sources(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither best.pt nor last.pt"):
        load_source(str(run))
    torch.save({"model": {}, "model_config": {"model": "vgg16"}, "epoch": 2}, run / "last.pt")
    assert load_source(str(run))[1] == run / "last.pt"
    torch.save({"model": {}, "model_config": {"model": "vgg16"}, "epoch": 1}, run / "best.pt")
    ckpt, path = load_source(run)
    assert path == run / "best.pt" and ckpt["epoch"] == 1
    state = tmp_path / "plain.pth"
    torch.save(nn.Linear(2, 2).state_dict(), state)
    assert [load_source(w) for w in ("imagenet", "none", None, str(state))] == [None] * 4
