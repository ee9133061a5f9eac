"""Import hygiene: the flow modules (the CLI's path to prepare, train and evaluate) import no
heavy library at module level, so a run with nothing to do does not pay for them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "torchvision", "captum", "sklearn", "scipy", "matplotlib")


def test_flow_modules_import_no_heavy_library() -> None:
    repo = Path(__file__).resolve().parents[2]
    code = (
        "import json, sys\n"
        "import flows.cli, flows.prepare, flows.train, flows.evaluate, flows.pipeline, tasks.prepare.extract, tasks.prepare.steps\n"
        "import tasks.evaluate.report  # the evaluate flow body imports it on every run, cached or not\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(repo))
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, check=True, capture_output=True,
                         text=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
