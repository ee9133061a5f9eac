"""Training, split by phase like torchvision's ``references/classification/train.py``.

* :mod:`models.training.data`: :func:`load_manifest`, :class:`ManifestDataset`,
  :class:`EpochSampler`, :func:`make_loaders`: the data;
* :mod:`models.training.engine`: :func:`build_optimizer` / :func:`apply_schedule` (two parameter
  groups, head and backbone, and the freeze-then-fine-tune schedule),
  :func:`train_one_epoch` / :func:`evaluate`: one pass each, returning loss and accuracy;
* :mod:`models.training.checkpoint`: the run folder (``last.pt``, ``best.pt``, ``history.csv``,
  ``config.json``), resume checks, :func:`load_classifier`;
* :mod:`models.training.fit`: :func:`fit`, the run: checkpoints, history, early stopping and resume.

This module is the command-line entry point, :func:`main`, that ``torchrun`` starts on
every rank; import the names above from their own modules::

    torchrun --standalone --nproc_per_node=4 -m models.training.torchrun_entry --config RUN/config.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from models.training import distributed
from models.training.fit import fit
from tasks.core.config import TrainConfig
from tasks.core.files import atomic_write_json

__all__ = [
    "fit",
    "main",
]


def main(argv: list[str] | None = None) -> int:
    """``python -m models.training.torchrun_entry --config CONFIG.json``: :func:`fit` outside Prefect.

    The entry point for ``torchrun`` (every rank runs it; a Prefect flow would start one
    flow run per rank)::

        torchrun --standalone --nproc_per_node=4 -m models.training.torchrun_entry --config RUN/config.json

    ``CONFIG.json`` is a ``TrainConfig`` as JSON, such as the ``config.json`` every run
    writes to its folder; rerunning with it resumes that run. Without ``torchrun`` it
    trains in this one process.

    Args:
        argv: Arguments; default ``sys.argv[1:]``.

    Returns:
        0, or 2 when the configuration, the data or the weights are bad (the error is
        printed to stderr).
    """
    parser = argparse.ArgumentParser(
        prog="python -m models.training.torchrun_entry",
        description="Train a classifier from a TrainConfig JSON (one process, or one per GPU under torchrun).",
    )
    parser.add_argument("--config", type=Path, required=True,
                        help="TrainConfig as JSON, e.g. the config.json of a run folder")
    parser.add_argument("--run-dir", default=None, help="override the configuration's run_dir")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                        help="override train.device (each torchrun process uses cuda:LOCAL_RANK)")
    parser.add_argument("--summary", type=Path, default=None,
                        help="rank 0 writes fit()'s result here as JSON")
    args = parser.parse_args(argv)

    try:
        env = distributed.current_env()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if env.rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {env.rank}/{env.world_size}] %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = TrainConfig.model_validate_json(args.config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"error: cannot read the training configuration '{args.config}': {exc}", file=sys.stderr)
        return 2
    if args.run_dir is not None:
        cfg = cfg.model_copy(update={"run_dir": args.run_dir})
    if args.device is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": args.device})})
    try:
        result = fit(cfg)
    except (ValueError, FileNotFoundError, NotImplementedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if env.rank == 0:
        if args.summary is not None:
            atomic_write_json(args.summary, result)
        print(json.dumps(result, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: the loader workers and
    # pickles then refer to the importable modules, not to __main__.
    from models.training.torchrun_entry import main as _main

    raise SystemExit(_main())

