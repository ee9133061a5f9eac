"""The ``tomoflow weights fetch|list`` command: torchvision's ImageNet weights in its cache."""

from __future__ import annotations

import argparse
import json

from tasks.core.backbone_names import BACKBONE_NAMES


def cmd_weights(args: argparse.Namespace) -> int:
    """``tomoflow weights fetch|list``: one JSON line per file."""
    from models.weights.fetch import cached_weights, fetch_weights

    if args.action == "fetch":
        for row in fetch_weights(tuple(args.model or BACKBONE_NAMES), mirror=args.mirror, force=args.force,
                                 timeout=args.timeout):
            print(json.dumps(row, sort_keys=True))
        return 0
    for row in cached_weights(check=not args.no_check):
        print(json.dumps(row, sort_keys=True))
    return 0


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds from 0 to 3600, e.g. 30")
    return value


def add_weights_command(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``tomoflow weights`` command."""
    p = sub.add_parser("weights", help="Fetch torchvision's ImageNet weights into its cache, or list what is cached.")
    actions = p.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser("fetch", help="Download the study backbones' ImageNet weights (hash-checked) "
                                             "into torchvision's cache; runs never download.")
    fetch.add_argument("--model", action="append", choices=BACKBONE_NAMES,
                       help="Fetch only this backbone (repeatable; default: all four).")
    fetch.add_argument("--mirror", default=None,
                       help="A base URL serving torchvision's file names (default: download.pytorch.org).")
    fetch.add_argument("--force", action="store_true", help="Download again even when the cached file's hash is good.")
    fetch.add_argument("--timeout", type=_seconds_arg, default=30.0,
                       help="Seconds to wait for the connection and for each read (default 30).")
    listing = actions.add_parser("list", help="Show each backbone's file in torchvision's cache and whether "
                                              "its hash matches.")
    listing.add_argument("--no-check", action="store_true", help="Do not hash the files, which is faster.")
    p.set_defaults(func=cmd_weights)
