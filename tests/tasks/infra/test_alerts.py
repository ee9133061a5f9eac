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


@pytest.mark.parametrize("url", ["http://", "http://[::1", "http://host:99999/x", "mailto:ops@example.org"])
def test_webhook_that_can_never_deliver_is_refused_in_one_line(url: str) -> None:
    """the URL is parsed whole (scheme, host, port) before anything is made."""
    from tasks.infra.alerts import checked_url

    with pytest.raises(ValueError) as caught:
        checked_url(url, "--webhook")
    assert str(caught.value).startswith(f"--webhook {url!r}") and "\n" not in str(caught.value)
    assert checked_url("https://hooks.example.org:8443/x", "--webhook") == "https://hooks.example.org:8443/x"
