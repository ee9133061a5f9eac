"""A ``--weights`` file that is not a state_dict gets one line of ours, never torch's advice to unpickle it
(models/weights/resolve.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from models.weights.resolve import load_weights_file


def test_pickled_model_and_text_are_refused_without_torchs_advice(tmp_path: Path) -> None:
    pickled = tmp_path / "model.pth"
    torch.save(nn.Linear(2, 2), pickled)  # a whole model: loading it would run pickled code
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    for path in (pickled, text):
        with pytest.raises(ValueError) as caught:
            load_weights_file(path)
        message = str(caught.value)
        assert str(path) in message and "state_dict" in message
        assert "weights_only" not in message and "\n" not in message


def test_a_state_dict_file_loads() -> None:
    """The control: a real state_dict passes."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ok.pth"
        torch.save(nn.Linear(2, 2).state_dict(), path)
        assert set(load_weights_file(path)) == {"weight", "bias"}
