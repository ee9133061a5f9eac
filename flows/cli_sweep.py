"""``tomoflow experiments --train-fractions ...``: the training-size sweep (the ``tomoflow-sweep`` flow).

Its options are parsed with the other ``experiments`` options (:mod:`flows.cli_experiments`),
which hands over here when ``--train-fractions`` is given.
"""

from __future__ import annotations

import argparse
import json


def cmd_sweep(args: argparse.Namespace) -> int:
    """Check the sweep's options, hold ``--out`` and run the ``tomoflow-sweep`` flow; print its outputs."""
    from flows.sweep import run_sweep
    from tasks.core.files import ensure_writable_dir
    from tasks.sweep.analysis import parse_fractions, parse_weights

    fractions = parse_fractions(args.train_fractions)
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats}: expected 1 or more")
    weights = parse_weights(args.weights or "none,imagenet")
    overrides: dict[str, dict[str, object]] = {}
    for section, field, value in args.set or []:
        overrides.setdefault(section, {})[field] = value
    ensure_writable_dir(args.out, what="--out")
    result = run_sweep(data_root=str(args.data_root), output_root=str(args.out), fractions=fractions, weights=weights,
                       preset=(args.preset or ["demo"])[0], overrides=overrides, repeats=args.repeats)
    print(json.dumps(result, sort_keys=True, default=str))
    return 0
