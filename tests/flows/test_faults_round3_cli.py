"""Issue 28: command edges that stop before any flow starts (fast: no Prefect server), run as a user runs them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.flows.cli_env import REPO, cli_command, cli_env


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), cwd=REPO, env=cli_env(tmp_path), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args", [
    ("export-slices", "{dcm}", "--out", "{out}", "--image-size", "100000"),
    ("prepare", "--data-root", "{out}", "--out", "{out}", "--image-size", "4096"),
    ("train", "--manifest", "{out}/m.parquet", "--out", "{out}", "--image-size", "100000"),
    ("experiments", "--data-root", "{out}", "--out", "{out}", "--image-size", "0"),
])
def test_image_size_has_a_documented_bound_checked_before_any_work(args: tuple[str, ...], tmp_path: Path) -> None:
    """Item 14: every --image-size is bounded (2048 for PNGs, 1024 for the network), one line, exit 2."""
    dcm = tmp_path / "x.dcm"
    dcm.write_bytes(b"not read")
    result = _run(tmp_path, *(a.format(dcm=dcm, out=tmp_path / "o") for a in args))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "--image-size" in last and "expected an integer from" in last
    assert not (tmp_path / "o").exists()  # nothing written
