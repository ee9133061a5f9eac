"""Alerts for the unattended service: Prefect automations that notify on failed, crashed or stuck runs.

The automations are defined in the repository (``deploy/automations.yaml``) and created on
the server by :func:`install_alerts` (called by ``tomoflow alerts``, :mod:`flows.cli_alerts`), which first makes
the notification block they send through: a JSON webhook, a Slack incoming webhook, or any
block the operator already created in the dashboard (e-mail, Teams, PagerDuty...). Running
it again replaces the automations of the same names, so it is safe to repeat after changing
a limit or the target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: The automations' definitions, in the repository.
AUTOMATIONS_FILE = Path(__file__).resolve().parents[2] / "deploy" / "automations.yaml"
#: The block ``--webhook`` / ``--slack`` create (and replace).
BLOCK_NAME = "tomoflow-alerts"


def _duration(seconds: int) -> str:
    """``30 minutes``, ``12 hours``: the limit as the notification says it."""
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return f"{hours} hour{'s' if hours != 1 else ''}"
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def automation_specs(block_id: str, pending_seconds: int, running_seconds: int,
                     path: Path = AUTOMATIONS_FILE) -> list[dict[str, Any]]:
    """The automations of ``path`` with the block and the limits filled in."""
    text = path.read_text()
    for old, new in (("__BLOCK__", str(block_id)), ("__PENDING_S__", str(int(pending_seconds))),
                     ("__RUNNING_S__", str(int(running_seconds))),
                     ("__PENDING_TEXT__", _duration(int(pending_seconds))),
                     ("__RUNNING_TEXT__", _duration(int(running_seconds)))):
        text = text.replace(old, new)
    return yaml.safe_load(text)["automations"]


def notification_block(webhook: str | None = None, slack: str | None = None, block: str | None = None) -> str:
    """The id of the block the alerts send through, creating ``tomoflow-alerts`` for a URL.

    Args:
        webhook: An HTTP(S) URL that receives a JSON POST ``{"subject": ..., "body": ...}``.
        slack: A Slack incoming-webhook URL.
        block: ``SLUG/NAME`` of an existing notification block (e.g. ``email/ops``).

    Raises:
        ValueError: not exactly one target, or a block that does not exist.
    """
    if sum(x is not None for x in (webhook, slack, block)) != 1:
        raise ValueError("give exactly one of --webhook URL, --slack URL or --block SLUG/NAME")
    if block is not None:
        from prefect.blocks.core import Block

        try:
            loaded = Block.load(block)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"no notification block {block!r} on this Prefect server ({exc}); create it in the "
                             "dashboard (Blocks) or pass --webhook URL") from None
        return str(loaded._block_document_id)
    if slack is not None:
        from prefect.blocks.notifications import SlackWebhook

        made = SlackWebhook(url=checked_url(slack, "--slack"))
    else:
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        made = CustomWebhookNotificationBlock(name=BLOCK_NAME, url=checked_url(str(webhook), "--webhook"),
                                              json_data={"subject": "{{subject}}", "body": "{{body}}"})
    return str(made.save(BLOCK_NAME, overwrite=True))


def checked_url(url: str, option: str) -> str:
    """``url`` when it is a whole http(s) URL (scheme, host, a valid port), else a one-line ValueError."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(str(url))
        port = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise ValueError(f"{option} {url!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{option} {url!r} is not an http(s) URL with a host, e.g. https://alerts.example.org/hook")
    del port
    return str(url)


#: Seconds the test message and the server check wait for an answer.
CHECK_TIMEOUT_S = 10


def send_test_message(url: str, *, slack: bool = False, timeout: float = CHECK_TIMEOUT_S) -> str:
    """POST one test message to the webhook; return ``"HTTP <status>"`` or raise a one-line ValueError."""
    import json
    import urllib.error
    import urllib.request

    text = "tomoflow alerts: test message (the automations are being installed)"
    payload = {"text": text} if slack else {"subject": "tomoflow alerts: test", "body": text}
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", None) or exc or type(exc).__name__)
    raise ValueError(f"the test message to {url} did not arrive ({reason}); nothing was installed. Fix the URL or "
                     "the receiver, or pass --no-test to install without sending one")


def check_server(api_url: str, timeout: float = CHECK_TIMEOUT_S) -> None:
    """One-line ValueError when the Prefect API at ``api_url`` does not answer its health check."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout):
            return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", None) or exc or type(exc).__name__)
    raise ValueError(f"the Prefect server at PREFECT_API_URL={api_url} does not answer ({reason}); start it, or "
                     "export PREFECT_API_URL=http://HOST:4200/api of the running service")


def install_alerts(block_id: str, pending_minutes: float = 30, running_hours: float = 12,
                   path: Path = AUTOMATIONS_FILE) -> list[str]:
    """Create (or replace, by name) the automations of ``path`` on the server; return their names."""
    from prefect.automations import Automation

    names = []
    for spec in automation_specs(block_id, int(pending_minutes * 60), int(running_hours * 3600), path):
        try:
            Automation.read(name=spec["name"]).delete()
        except ValueError:  # none of that name yet
            pass
        names.append(Automation.model_validate(spec).create().name)
    return names
