"""The files of a training run folder, by name: the one place that knows the run folder's layout.

A leaf module (standard library only): the training code writes these files
(:mod:`models.training.checkpoint`, :mod:`models.training.fit`), and everything that reads a run
folder (the weights setting's ``run`` kind, evaluation, scoring, the pipeline) finds them here,
without importing PyTorch or the networks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BEST_NAME", "CONFIG_NAME", "HISTORY_NAME", "LAST_NAME", "RunPaths", "chosen_checkpoint"]

LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
HISTORY_NAME = "history.csv"
CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class RunPaths:
    """The files of a run folder."""

    last: Path
    best: Path
    history: Path
    config: Path

    @classmethod
    def of(cls, run_dir: str | os.PathLike[str]) -> RunPaths:
        """The files of ``run_dir``."""
        run_dir = Path(run_dir)
        return cls(run_dir / LAST_NAME, run_dir / BEST_NAME, run_dir / HISTORY_NAME, run_dir / CONFIG_NAME)


def chosen_checkpoint(run_dir: str | os.PathLike[str]) -> Path:
    """The checkpoint a run is evaluated with: ``best.pt`` (best validation epoch), else ``last.pt``.

    ``best.pt`` is missing when no epoch was validated; the path returned may not exist.
    """
    run = Path(run_dir)
    return run / BEST_NAME if (run / BEST_NAME).is_file() else run / LAST_NAME
