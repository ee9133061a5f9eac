"""The run folder's file names and the checkpoint a run is evaluated with (tasks/core/run_folder.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import tasks.core.run_folder as run_folder
from tasks.core.run_folder import RunPaths, chosen_checkpoint


def test_best_checkpoint_is_chosen_over_last_and_last_without_best(tmp_path: Path) -> None:
    (tmp_path / "last.pt").write_bytes(b"last")
    assert chosen_checkpoint(tmp_path) == tmp_path / "last.pt"
    (tmp_path / "best.pt").write_bytes(b"best")
    assert chosen_checkpoint(str(tmp_path)) == tmp_path / "best.pt"


def test_run_paths_name_the_four_files(tmp_path: Path) -> None:
    paths = RunPaths.of(str(tmp_path))
    assert (paths.last, paths.best, paths.history, paths.config) == (
        tmp_path / "last.pt", tmp_path / "best.pt", tmp_path / "history.csv", tmp_path / "config.json")


def test_the_run_folder_module_is_a_leaf() -> None:
    """It imports the standard library only, so models/weights and models/training can both import it
    without closing a loop through the networks."""
    tree = ast.parse(Path(run_folder.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "os", "dataclasses", "pathlib"}, imported
