"""``tomoflow experiments``: its options, parsed in one place, and the command.

Every option that changes what the experiments run lands in :func:`experiments_kwargs`, the
one mapping from parsed options to :func:`flows.pipeline.run_experiments`' arguments, so new
options (a training-size sweep, weights from a tomoflow run) slot in beside these.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from flows.cli_config import field_bounds, image_size_arg, setting_arg
from tasks.core.config import TrainParams


def add_experiments(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """The ``tomoflow experiments`` command and its options."""
    p = sub.add_parser("experiments", help="Run the study's experiment presets and compare them.")
    p.add_argument("--data-root", type=Path, required=True,
                   help="The BCS-DBT folder, of any number of patients (for example from tomoflow synth).")
    p.add_argument("--out", type=Path, required=True, help="The output root; comparison.md and comparison.csv are "
                                                           "written there.")
    p.add_argument("--preset", action="append", default=None,
                   help="Run only this preset (repeatable; default: the study's sequence).")
    p.add_argument("--weights", default=None,
                   help="The starting weights: preset (the default) uses each preset's own, whose ImageNet weights "
                        "must be "
                        "in torchvision's cache (checked before any data is prepared), and none trains every preset "
                        "from scratch. With --train-fractions it is a comma-separated list of starting points (none, "
                        "imagenet, a state_dict file or a tomoflow run folder), the first being the reference of the "
                        "paired differences (default none,imagenet).")
    p.add_argument("--epochs", type=int, default=None, help="The epochs of every preset (default: the preset's).")
    p.add_argument("--image-size", type=image_size_arg(*field_bounds(TrainParams, "image_size")), default=None,
                   help="The prepared image and network input side of every preset (default: the preset's).")
    p.add_argument("--max-batches", type=int, default=None,
                   help="At most this many batches per epoch, for a smoke run (default: all).")
    p.add_argument("--train-fractions", default=None,
                   help="Run a training-size sweep over these shares of the training patients, such as 0.1,0.25,0.5,1 "
                        "(nested, stratified subsets; validation and test fixed). Each --weights starting point "
                        "trains at each size with the first --preset's settings (default demo), and the sweep writes "
                        "sweep/sweep.csv and sweep.png.")
    p.add_argument("--repeats", type=int, default=1,
                   help="With --train-fractions, the repeats of every starting point and size, each with its own "
                        "nested "
                        "subsets and initial seed (sweep.csv's repeat column); the differences pool repeats and test "
                        "patients (default 1).")
    p.add_argument("--set", action="append", type=setting_arg, default=None, metavar="SECTION.FIELD=VALUE",
                   help="A setting over the preset, such as --set train.epochs=2 (repeatable). With --train-fractions "
                        "every arm trains with early stopping (train.patience 5) once it has taken train.min_steps "
                        "(100) optimiser steps, up to train.epochs (60); --epochs or --max-batches cap it, and its "
                        "row then says capped.")
    p.set_defaults(func=cmd_experiments)
    return p


def experiments_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`flows.pipeline.run_experiments`' arguments from the parsed options (checked here)."""
    from tasks.pipeline.experiments import experiment_overrides

    if args.repeats != 1:
        raise ValueError(f"--repeats {args.repeats}: repeats are for a training-size sweep (--train-fractions)")
    weights = args.weights or "preset"
    if weights not in ("preset", "none"):
        raise ValueError(f"--weights {weights}: expected preset or none for a preset comparison "
                         "(a list of starting points needs --train-fractions)")
    return {
        "data_root": str(args.data_root),
        "output_root": str(args.out),
        "presets": args.preset or None,
        "weights": weights,
        "overrides": experiment_overrides(epochs=args.epochs, image_size=args.image_size,
                                          max_batches=args.max_batches),
    }


def cmd_experiments(args: argparse.Namespace) -> int:
    """Run the experiments and print where the comparison is."""
    from flows.pipeline import run_experiments
    from tasks.pipeline.experiments import plan_experiments
    from tasks.core.files import ensure_writable_dir

    if args.train_fractions is not None:
        from flows.cli_sweep import cmd_sweep
        from tasks.pipeline.experiments import experiment_overrides

        # --epochs, --image-size and --max-batches apply to the sweep as they do to presets.
        for section, values in experiment_overrides(epochs=args.epochs, image_size=args.image_size,
                                                    max_batches=args.max_batches).items():
            args.set = (args.set or []) + [(section, k, v) for k, v in values.items()]
        return cmd_sweep(args)
    kwargs = experiments_kwargs(args)
    if not Path(args.data_root).is_dir():
        raise FileNotFoundError(f"--data-root {args.data_root}: no such folder")
    ensure_writable_dir(args.out, what="--out")
    # Presets, settings and starting weights, before Prefect starts or any data is prepared
    # (the flow plans again: a deployment run has no terminal in front of it).
    plan_experiments(**{k: kwargs[k] for k in ("presets", "data_root", "output_root", "overrides", "weights")})
    result = run_experiments(**kwargs)
    print(json.dumps(result, sort_keys=True, default=str))
    return 0
