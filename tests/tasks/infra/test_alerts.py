"""The service's automations, as defined in deploy/automations.yaml, are valid Prefect automations."""

from __future__ import annotations

import uuid

import pytest


def test_automations_file_gives_valid_automations_with_the_limits() -> None:
    from prefect.automations import Automation

    from tasks.infra.alerts import automation_specs

    block = uuid.uuid4()
    specs = automation_specs(str(block), pending_seconds=1800, running_seconds=43200)
    automations = {s["name"]: Automation.model_validate(s) for s in specs}
    assert set(automations) == {"tomoflow-run-failed", "tomoflow-run-stuck-pending", "tomoflow-run-stuck-running"}
    failed = automations["tomoflow-run-failed"]
    assert set(failed.trigger.expect) == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert failed.actions[0].block_document_id == block
    pending, running = automations["tomoflow-run-stuck-pending"], automations["tomoflow-run-stuck-running"]
    assert pending.trigger.posture == "Proactive" and pending.trigger.within.total_seconds() == 1800
    assert running.trigger.within.total_seconds() == 43200 and "12 hours" in running.actions[0].body
    assert "30 minutes" in pending.actions[0].body
    for automation in automations.values():
        # Only the tomoflow deployments' runs (tag "tomoflow" in prefect.yaml) raise alerts.
        related = automation.trigger.match_related
        assert related["prefect.resource.id"] in ("prefect.tag.tomoflow", ["prefect.tag.tomoflow"])
        assert "__" not in automation.actions[0].body + automation.actions[0].subject


def test_notification_block_needs_exactly_one_target() -> None:
    from tasks.infra.alerts import notification_block

    with pytest.raises(ValueError, match="exactly one"):
        notification_block()
    with pytest.raises(ValueError, match="exactly one"):
        notification_block(webhook="http://127.0.0.1:1/x", slack="http://127.0.0.1:1/y")
    with pytest.raises(ValueError, match="not an http"):
        notification_block(webhook="ftp://example/x")


def test_cli_without_a_server_says_what_to_set(tmp_path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(repo)})
    result = subprocess.run([sys.executable, "-m", "flows.cli", "alerts", "--webhook", "http://127.0.0.1:9/x"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "tomoflow alerts: error: PREFECT_API_URL is not set: alerts live on the service's Prefect server; "
        "export PREFECT_API_URL=http://HOST:4200/api first"]
