"""The ``tomoflow`` commands of transfer and generalisation: ``weights fetch|list`` and the training-size
sweep behind ``experiments --train-fractions``, whose options live in :mod:`flows.cli_experiments` (kept apart from :mod:`flows.cli` so each module stays small)."""

from __future__ import annotations

import argparse
import json

from tasks.core.backbone_names import BACKBONE_NAMES

__all__ = ["add_weights_command", "cmd_sweep", "cmd_weights", "setting_arg"]


def setting_arg(text: str) -> tuple[str, str, object]:
    """``--set train.epochs=2`` as ``("train", "epochs", 2)`` (the value read as YAML)."""
    import yaml

    key, sep, value = text.partition("=")
    section, dot, field = key.strip().partition(".")
    if not (sep and dot and section and field):
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected SECTION.FIELD=VALUE, e.g. train.epochs=2")
    return section, field, yaml.safe_load(value)


def cmd_sweep(args: argparse.Namespace) -> int:
    """``tomoflow experiments --train-fractions ...``: the ``tomoflow-sweep`` flow."""
    from flows.sweep import run_sweep
    from tasks.sweep.analysis import parse_fractions, parse_weights

    fractions = parse_fractions(args.train_fractions)
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats}: expected 1 or more")
    weights = parse_weights(args.weights or "none,imagenet")
    overrides: dict[str, dict[str, object]] = {}
    for section, field, value in args.set or []:
        overrides.setdefault(section, {})[field] = value
    from flows.cli import _writable

    _writable(args.out)
    result = run_sweep(data_root=str(args.data_root), output_root=str(args.out), fractions=fractions, weights=weights,
                       preset=(args.preset or ["demo"])[0], overrides=overrides, repeats=args.repeats)
    print(json.dumps(result, sort_keys=True, default=str))
    return 0


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
    p = sub.add_parser("weights", help="fetch torchvision's ImageNet weights into its cache, or list what is cached")
    actions = p.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser("fetch", help="download the study backbones' ImageNet weights (hash-checked) "
                                             "into torchvision's cache; runs never download")
    fetch.add_argument("--model", action="append", choices=BACKBONE_NAMES,
                       help="only this backbone (repeatable); default: all three")
    fetch.add_argument("--mirror", default=None,
                       help="base URL serving torchvision's file names (default: download.pytorch.org)")
    fetch.add_argument("--force", action="store_true", help="download again even when cached with a good hash")
    fetch.add_argument("--timeout", type=_seconds_arg, default=30.0,
                       help="seconds to wait for the connection and for each read (default 30)")
    listing = actions.add_parser("list", help="show each backbone's file in torchvision's cache and whether "
                                              "its hash matches")
    listing.add_argument("--no-check", action="store_true", help="do not hash the files (faster)")
    p.set_defaults(func=cmd_weights)
