"""How the CLI fault tests start ``tomoflow``: a subprocess on a Prefect home of its own."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cli_env(tmp_path: Path) -> dict[str, str]:
    """This environment with a fresh ``PREFECT_HOME`` under ``tmp_path`` and no ``PREFECT_API_URL``."""
    env = dict(os.environ)
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("PREFECT_API_URL", None)
    return env


def cli_command(*args: str) -> list[str]:
    """``python -m flows.cli ARGS`` with this interpreter."""
    return [sys.executable, "-m", "flows.cli", *args]
