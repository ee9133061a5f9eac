"""Tests for tasks.infra.process_defaults: applied explicitly (the CLI, the worker, each flow), never on import."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.infra.process_defaults import ENV_DEFAULTS, apply_process_defaults

REPO = Path(__file__).resolve().parents[3]


def _python(code: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ENV_DEFAULTS}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


REPORT = (
    "import json, logging, os\n"
    "from tasks.infra.redaction import RedactingFilter\n"
    "print(json.dumps({'env': {k: os.environ.get(k) for k in %r},\n"
    "                  'redacting': any(isinstance(f, RedactingFilter) for f in logging.getLogger('tasks').filters),\n"
    "                  'tasks_handlers': len(logging.getLogger('tasks').handlers)}))\n" % (sorted(ENV_DEFAULTS),)
)


def test_importing_the_flows_changes_neither_the_environment_nor_logging() -> None:
    seen = _python("import flows, flows.prepare, flows.train, flows.evaluate, flows.pipeline, flows.sweep, "
                   "flows.score, flows.cli\n" + REPORT)
    assert seen == {"env": {k: None for k in ENV_DEFAULTS}, "redacting": False, "tasks_handlers": 0}


def test_the_cli_applies_the_defaults_before_prefect_reads_them() -> None:
    # main() applies them first thing; --help then exits. Prefect, imported afterwards, hands
    # the plain modules' logger ("tasks") its handlers: their lines reach the run logs.
    seen = _python("import flows.cli\ntry:\n    flows.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
                   "import prefect.main  # what a flow run imports: Prefect configures its logging\n" + REPORT)
    assert seen["env"] == ENV_DEFAULTS and seen["redacting"] and seen["tasks_handlers"] > 0


def test_apply_keeps_what_the_user_set_and_installs_the_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.infra.engine_logs import _OrdinaryFailure

    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "true")
    monkeypatch.delenv("PREFECT_LOGGING_EXTRA_LOGGERS", raising=False)
    apply_process_defaults()
    apply_process_defaults()  # again: nothing more
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"
    assert os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] == "tasks,models"
    filters = [f for f in logging.getLogger("prefect.flow_runs").filters if isinstance(f, _OrdinaryFailure)]
    assert len(filters) == 1
