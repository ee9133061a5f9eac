"""The ``tomoflow alerts`` command: its options and the call of :mod:`tasks.infra.alerts`."""

from __future__ import annotations

import argparse
from typing import Callable

from tasks.infra.alerts import check_server, checked_url, install_alerts, notification_block, send_test_message


def cmd_alerts(args: argparse.Namespace) -> int:
    """``tomoflow alerts``: the block, then the automations, on the server of PREFECT_API_URL."""
    from prefect.settings import get_current_settings

    api_url = get_current_settings().api.url
    if not api_url:
        raise ValueError("PREFECT_API_URL is not set: alerts live on the service's Prefect server; "
                         "export PREFECT_API_URL=http://HOST:4200/api first")
    target = args.webhook if args.webhook is not None else args.slack
    if target is not None:
        checked_url(target, "--webhook" if args.webhook is not None else "--slack")
        if not args.no_test:
            print(f"test message: arrived ({send_test_message(target, slack=args.slack is not None)})")
    check_server(str(api_url))
    block = notification_block(webhook=args.webhook, slack=args.slack, block=args.block)
    for name in install_alerts(block, pending_minutes=args.pending_minutes, running_hours=args.running_hours):
        print(f"automation {name}: created")
    return 0


def _bounded(low: float, high: float, unit: str) -> Callable[[str], float]:
    """An argparse type: a number of ``unit`` from ``low`` to ``high``, else a one-line error."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {unit} from {low:g} to {high:g}")
        return value

    return parse


def add_alerts_command(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``tomoflow alerts`` command."""
    p = sub.add_parser("alerts", help="Create the service's Prefect automations that notify on failed, crashed or "
                       "stuck runs.")
    p.add_argument("--webhook", default=None,
                   help="A URL that receives each alert as a JSON POST of subject and body.")
    p.add_argument("--slack", default=None, help="A Slack incoming-webhook URL that receives each alert.")
    p.add_argument("--block", default=None,
                   help="An existing notification block to send through, as SLUG/NAME (for example email/ops).")
    p.add_argument("--pending-minutes", type=_bounded(1, 1440, "minutes"), default=30,
                   help="Alert on a run that has not started after this many minutes (1 to 1440; default 30).")
    p.add_argument("--running-hours", type=_bounded(0.25, 168, "hours"), default=12,
                   help="Alert on a run that is still running after this many hours (0.25 to 168; default 12).")
    p.add_argument("--no-test", action="store_true",
                   help="Install without sending a test message first. By default one is sent to --webhook or "
                        "--slack, and nothing is installed unless it arrives.")
    p.set_defaults(func=cmd_alerts)

