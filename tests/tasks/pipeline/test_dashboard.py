"""The pipeline dashboard's learning-curve PNG is the report's figure (tasks/pipeline/dashboard.py)."""

from __future__ import annotations

import struct
from pathlib import Path

import pandas as pd

from tasks.pipeline.dashboard import learning_curves_png
from tasks.evaluate.report_figures import CURVE_COLUMNS


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_dashboard_curves_are_the_report_figure_and_skip_an_unusable_history(tmp_path: Path) -> None:
    history = pd.DataFrame({"epoch": [2, 1, 3], "train_loss": [0.5, 0.7, 0.4], "train_accuracy": [0.7, 0.5, 0.8],
                            "val_loss": [0.6, 0.7, 0.55], "val_accuracy": [0.6, 0.5, 0.7]})
    history.to_csv(tmp_path / "history.csv", index=False)
    png = learning_curves_png(tmp_path / "history.csv", tmp_path / "curves.png")
    assert png == tmp_path / "curves.png"
    # The report's 10 x 3.8 inch figure at the dashboard's 80 dpi.
    assert _png_size(png.read_bytes()) == (800, 304)
    history.drop(columns=[CURVE_COLUMNS[-1]]).to_csv(tmp_path / "partial.csv", index=False)
    assert learning_curves_png(tmp_path / "partial.csv", tmp_path / "none.png") is None
    assert learning_curves_png(tmp_path / "missing.csv", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
