"""``tomoflow score``: a trained run over every frame of new studies (the ``score-studies`` flow)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer such as 2")
    return value


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a probability strictly between 0 and 1, such as 0.3")
    return value


def cmd_score(args: argparse.Namespace) -> int:
    """Build the configuration, hold --out, run the flow and print the output paths."""
    from flows.score import score_studies
    from models.training.checkpoint import read_checkpoint
    from tasks.core.files import ensure_writable_dir, output_lock
    from tasks.core.score_config import ScoreConfig
    from tasks.score.inputs import check_inputs
    from tasks.score.worklist import run_settings

    settings = run_settings(args.run, threshold=args.threshold)  # a bad run folder stops here, before Prefect starts
    read_checkpoint(settings["checkpoint"], advice="train the run again, or score with another run")
    check_inputs(args.data_root)  # no folder, or nothing to score in it: one line, before Prefect starts
    ensure_writable_dir(args.out, what="--out")
    config = ScoreConfig(run_dir=str(args.run), data_root=str(args.data_root), output_dir=str(args.out),
                         stride=args.stride, topk=args.topk, threshold=args.threshold, batch_size=args.batch_size,
                         device=args.device, workers=args.workers, autocast=args.autocast)
    if args.threshold is not None:
        print(f"tomoflow score: threshold {args.threshold:g} from --threshold (overrides the run's recorded one)")
    with output_lock(args.out, what="tomoflow score"):
        result = score_studies(config=config)
    print(json.dumps(result, sort_keys=True, default=str))
    return 0


def add_score(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``tomoflow score`` command."""
    p = sub.add_parser(
        "score", help="Score every frame of new studies with a trained run and write a worklist (no labels needed).",
        description="Score every frame of every volume under --data-root (listed by BCS-DBT file-paths CSVs when "
        "present, else every DICOM found, identified from its header) with the run's checkpoint, read at the sizes "
        "it trained at. Writes frame_scores.parquet, volumes.parquet, worklist.csv, worklist.html and "
        "score_summary.json. Scores are cached per volume (DICOM content, checkpoint, settings): a rerun scores "
        "only new volumes and a killed run resumes.")
    p.add_argument("--run", type=Path, required=True, help="The training run folder, as given to tomoflow train --out.")
    p.add_argument("--data-root", type=Path, required=True, help="The folder of the studies to score.")
    p.add_argument("--out", type=Path, required=True, help="The folder the worklist and scores are written to.")
    p.add_argument("--stride", type=_positive, default=1, help="Score every K-th frame (default 1: every frame).")
    p.add_argument("--topk", type=_positive, default=3, help="The number of top frames averaged into score_topk "
                                                             "(default 3).")
    p.add_argument("--threshold", type=_threshold, default=None,
                   help="The operating threshold (default: the one the run's evaluation chose on validation, in "
                        "threshold.json, else 0.5).")
    p.add_argument("--batch-size", type=_positive, default=32, help="Frames per forward pass (default 32).")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="The device: auto uses CUDA when available (default auto).")
    p.add_argument("--workers", type=int, default=None,
                   help="Decode worker processes (0 decodes in the model's process; default: the cores less one, at "
                        "most 4).")
    p.add_argument("--autocast", action="store_true", help="Run the forward pass under bf16 autocast on CUDA.")
    p.set_defaults(func=cmd_score)
