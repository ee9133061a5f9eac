"""Alerts for the unattended service: Prefect automations that notify on failed, crashed or stuck runs.

The automations are defined in the repository (``deploy/automations.yaml``) and created on
the server by :func:`install_alerts` (the ``tomoflow alerts`` command), which first makes
the notification block they send through: a JSON webhook, a Slack incoming webhook, or any
block the operator already created in the dashboard (e-mail, Teams, PagerDuty...). Running
it again replaces the automations of the same names, so it is safe to repeat after changing
a limit or the target.
"""

from __future__ import annotations

import argparse
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

        made = SlackWebhook(url=slack)
    else:
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        if not str(webhook).startswith(("http://", "https://")):
            raise ValueError(f"--webhook {webhook!r} is not an http(s) URL")
        made = CustomWebhookNotificationBlock(name=BLOCK_NAME, url=str(webhook),
                                              json_data={"subject": "{{subject}}", "body": "{{body}}"})
    return str(made.save(BLOCK_NAME, overwrite=True))


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


def _cmd_alerts(args: argparse.Namespace) -> int:
    """``tomoflow alerts``: the block, then the automations, on the server of PREFECT_API_URL."""
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise ValueError("PREFECT_API_URL is not set: alerts live on the service's Prefect server; "
                         "export PREFECT_API_URL=http://HOST:4200/api first")
    block = notification_block(webhook=args.webhook, slack=args.slack, block=args.block)
    for name in install_alerts(block, pending_minutes=args.pending_minutes, running_hours=args.running_hours):
        print(f"automation {name}: created")
    return 0


def add_alerts_command(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``tomoflow alerts`` command, added to the ``tomoflow`` parser (flows/cli.py)."""
    p = sub.add_parser("alerts", help="create the service's Prefect automations: notify on failed, crashed or "
                       "stuck runs")
    p.add_argument("--webhook", default=None, help="URL that receives a JSON POST {subject, body}")
    p.add_argument("--slack", default=None, help="Slack incoming-webhook URL")
    p.add_argument("--block", default=None, help="an existing notification block, SLUG/NAME (e.g. email/ops)")
    p.add_argument("--pending-minutes", type=float, default=30, help="alert on a run not started after this")
    p.add_argument("--running-hours", type=float, default=12, help="alert on a run still running after this")
    p.set_defaults(func=_cmd_alerts)
