"""The ``tomoflow`` command line: thin wrappers that parse options and call tasks or flows."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Sequence

from flows.cli_alerts import add_alerts_command
from flows.cli_experiments import add_experiments
from flows.cli_score import add_score
from flows.cli_serve import add_serve_outputs
from flows.cli_synth import add_demo, add_synth
from flows.cli_config import (
    config_option,
    field_bounds,
    image_size_arg,
    evaluate_config_from_args,
    prepare_config_from_args,
    setting_arg,
    train_config_from_args,
)
from flows.cli_weights import add_weights_command
from tasks.core.config import SlicesConfig, TrainParams
from tasks.core.schema import VIEWS


def _writable(path: Path) -> None:
    """Fail at once, before a flow (or the temporary Prefect server) starts, if ``path`` can't be written."""
    from tasks.core.files import ensure_writable_dir

    ensure_writable_dir(path, what="--out")


def _fraction_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction between 0 and 1, such as 0.1")
    return value


def _frames_arg(text: str) -> list[int]:
    try:
        frames = [int(part) for part in text.split(",") if part.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--frames {text!r}: expected comma-separated frame indices such as 0,5,12"
        ) from None
    if not frames or any(f < 0 for f in frames):
        raise argparse.ArgumentTypeError(f"--frames {text!r}: expected non-negative frame indices")
    return frames


def _cmd_export_slices(args: argparse.Namespace) -> int:
    from tasks.reader.frames import export_slices

    records = export_slices(
        args.file, args.out, frames=args.frames, view=args.view, image_size=args.image_size,
        full_resolution=args.full_resolution,
    )
    for record in records:
        print(json.dumps(record, sort_keys=True, default=str))
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from flows.prepare import prepare_data

    from tasks.core.files import output_lock

    config = prepare_config_from_args(args)
    _writable(args.out)
    with output_lock(args.out, what="tomoflow prepare"):  # a second run stops here, at once
        result = prepare_data(config=config)
    print(json.dumps(result, sort_keys=True, default=str))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from flows.train import train_classifier
    from models.weights.resolve import resolve_weights

    from tasks.core.files import output_lock

    config = train_config_from_args(args)
    # Missing ImageNet weights (or a weights path that is not there): one line, before --out exists.
    resolve_weights(config.model.model, config.model.weights)
    _writable(args.out)
    with output_lock(args.out, what="tomoflow train"):  # a second run into --out stops here, at once
        result = train_classifier(config=config)
    print(json.dumps(result, sort_keys=True, default=str))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from flows.evaluate import evaluate_model

    from tasks.evaluate.locks import evaluation_locks

    config = evaluate_config_from_args(args)
    if args.out is not None:
        _writable(args.out)
    # Refuses a run folder still being trained, and a second evaluation into the same folder.
    with evaluation_locks(config.run_dir, config.output_dir, what="tomoflow evaluate"):
        result = evaluate_model(config=config)
    print(json.dumps(result, sort_keys=True, default=str))
    return 0


def _run_overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """``tomoflow run``'s ``--set`` and ``--epochs`` as the pipeline's ``config``, checked with the preset.

    Raises:
        ValueError: An unknown preset (or a file path given as one), or a setting the configuration refuses.
    """
    from tasks.core.presets import check_preset, pipeline_config

    if args.preset is not None:
        check_preset(args.preset)
    overrides: dict[str, dict[str, object]] = {}
    for section, field, value in args.set or []:
        overrides.setdefault(section, {})[field] = value
    if args.epochs is not None:
        overrides.setdefault("train", {})["epochs"] = args.epochs
    try:
        pipeline_config(preset=args.preset, data_root=str(args.data_root), output_root=str(args.out), base=overrides)
    except ValueError as exc:  # pydantic's ValidationError: one line per wrong field
        first = str(exc).splitlines()
        raise ValueError(f"--set/--epochs: {' '.join(line.strip() for line in first[:3])}") from None
    return overrides


def _cmd_run(args: argparse.Namespace) -> int:
    from flows.pipeline import tomoflow_pipeline

    # Before Prefect starts and before --out is created: nothing is left behind by a wrong option.
    overrides = _run_overrides(args)
    _writable(args.out)
    extra = [str(p) for p in args.extra_data_root or ()]
    if extra:
        overrides = {**overrides, "data": {**overrides.get("data", {}), "extra_data_roots": extra}}
    result = tomoflow_pipeline(data_root=str(args.data_root), output_root=str(args.out), preset=args.preset,
                               config=overrides or None)
    print(json.dumps(result, sort_keys=True, default=str))
    return 0


def _add_export_slices(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``tomoflow export-slices`` command."""
    p = sub.add_parser("export-slices", help="Write frames of one DICOM file as 8-bit PNGs.")
    p.add_argument("file", type=Path, help="The DICOM file to read.")
    p.add_argument("--out", type=Path, required=True, help="The folder the NNNN.png files are written to.")
    p.add_argument("--frames", type=_frames_arg, default=None, help="Comma-separated frame indices, such as 0,5,12 "
                                                                    "(default: every frame).")
    p.add_argument("--view", default=None, choices=VIEWS,
                   help="Orient DBT frames by the reference rule for this view.")
    p.add_argument("--image-size", type=image_size_arg(1, field_bounds(SlicesConfig, "image_size")[1]), default=None,
                   help=f"Letterbox each frame to N x N pixels (at most {field_bounds(SlicesConfig, 'image_size')[1]}; "
                        "default: the frame's own size).")
    p.add_argument("--full-resolution", action="store_true",
                   help="Decode every frame in full. By default JPEG 2000 breast images are decoded at the coarsest "
                        "stored resolution level that still covers --image-size.")
    p.set_defaults(func=_cmd_export_slices)


def _add_prepare(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``tomoflow prepare`` command."""
    p = sub.add_parser("prepare", help="Run the prepare-data flow: cohorts, slices, splits and the manifest.")
    opt = functools.partial(config_option, p, command="prepare")
    opt("--data-root", type=Path, required=True)
    opt("--extra-data-root", type=Path, action="append", default=None, metavar="DIR")
    opt("--out", type=Path, required=True)
    opt("--strategy", default="all-slices", note="Default: all-slices.")
    opt("--image-size", type=image_size_arg(*field_bounds(SlicesConfig, "image_size")), default=224,
        note="Default: 224 (from %d to %d)." % field_bounds(SlicesConfig, "image_size"))
    opt("--seed", type=int, default=0, note="Default: 0.")
    opt("--normal-fraction", type=float, default=0.15, note="Default: 0.15.")
    opt("--reports", type=Path, default=None)
    opt("--no-labels", action="store_true",
        help="Ignore the BCS-DBT labels CSV and derive the cohorts from --reports alone.")
    opt("--workers", type=int, default=None)
    opt("--executor", default=None)
    opt("--full-resolution", action="store_true")
    opt("--max-reject-fraction", type=_fraction_arg, default=None, note="Default: 0.1.")
    opt("--reports-encoding", default=None)
    p.set_defaults(func=_cmd_prepare)


def _add_train(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``tomoflow train`` command."""
    p = sub.add_parser("train", help="Run the train-classifier flow on a prepared manifest.")
    opt = functools.partial(config_option, p, command="train")
    opt("--manifest", type=Path, required=True)
    opt("--out", type=Path, required=True, note="Running the same command again resumes the training.")
    opt("--model", default="vgg16", note="Default: vgg16.")
    opt("--weights", default="imagenet", note="Default: imagenet.")
    opt("--transfer", default=None, note="Default: all.")
    opt("--head", default="single", note="Default: single.")
    opt("--optimizer", default="sgd", note="Default: sgd.")
    opt("--epochs", type=int, default=None, note="Default: 10.")
    opt("--batch-size", type=int, default=None, note="Default: 64.")
    opt("--image-size", type=image_size_arg(*field_bounds(TrainParams, "image_size")), default=None,
        note="Default: 224 (from %d to %d)." % field_bounds(TrainParams, "image_size"))
    opt("--patience", type=int, default=None, note="Default: 20.")
    opt("--no-early-stopping", action="store_true",
        help="Train every epoch of --epochs, without early stopping (patience none).")
    opt("--lr", type=float, default=None, note="Default: 0.001.")
    opt("--freeze-epochs", type=int, default=None)
    opt("--seed", type=int, default=None)
    opt("--max-batches", type=int, default=None)
    opt("--num-workers", type=int, default=None)
    opt("--device", default="auto", note="Default: auto.")
    opt("--no-augment", action="store_true",
        help="Train without online augmentation (no random flips, rotations, zoom, shifts or brightness).")
    opt("--balance", action="store_true")
    p.set_defaults(func=_cmd_train)


def _add_evaluate(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``tomoflow evaluate`` command."""
    p = sub.add_parser("evaluate", help="Run the evaluate-model flow on a training run.")
    opt = functools.partial(config_option, p, command="evaluate")
    opt("--run", type=Path, required=True, note="It is the folder given to tomoflow train --out.")
    opt("--manifest", type=Path, default=None)
    opt("--out", type=Path, default=None)
    opt("--split", default="test", note="Default: test.")
    opt("--aggregate", default="max", note="Default: max.")
    opt("--threshold", type=float, default=None, note="A threshold given here overrides the chosen one, and the "
                                                      "outputs say so.")
    opt("--threshold-rule", default=None)
    opt("--threshold-target", type=float, default=None, note="Default: 0.9.")
    opt("--frame-stride", type=int, default=None, note="Default: 1.")
    opt("--topk", type=int, default=None, note="Default: 3.")
    opt("--data-root", type=Path, default=None)
    opt("--bootstrap", type=int, default=None, note="Default: 1000.")
    opt("--seed", type=int, default=None)
    opt("--device", default="auto", note="Default: auto.")
    opt("--allow-overlap", action="store_true")
    opt("--external", type=Path, default=None)
    opt("--external-split", default=None, note="Default: all.")
    opt("--show-ids", action="store_true")
    p.set_defaults(func=_cmd_evaluate)


def _add_run(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``tomoflow run`` command."""
    p = sub.add_parser("run", help="Run the whole tomoflow-pipeline flow: prepare, train and evaluate.")
    p.add_argument("--data-root", type=Path, required=True,
                   help="The folder holding the BCS-DBT CSVs and the Breast-Cancer-Screening-DBT image folder.")
    p.add_argument("--extra-data-root", type=Path, action="append", default=None, metavar="DIR",
                   help="A folder the file-paths CSVs' absolute paths may point into, such as the mount holding the "
                        "collection (repeatable).")
    p.add_argument("--out", type=Path, required=True, help="The output root every stage writes under.")
    p.add_argument("--preset", default=None,
                   help="A preset from configs/ by name, such as demo, cpu-scratch (a from-scratch recipe sized for a CPU) "
                        "or m1-baseline; an unknown name or a file path is refused.")
    p.add_argument("--epochs", type=int, default=None, help="The number of training epochs (default: the preset's).")
    p.add_argument("--set", action="append", type=setting_arg, default=None, metavar="SECTION.FIELD=VALUE",
                   help="A setting over the preset, such as --set train.lr=0.01 (repeatable; the settings are in "
                        "tasks/core/config.py).")
    p.set_defaults(func=_cmd_run)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tomoflow`` command."""
    parser = argparse.ArgumentParser(
        prog="tomoflow",
        description="Breast tomosynthesis (BCS-DBT) to a trained tumour classifier, as Prefect flows.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    add_synth(sub)
    _add_export_slices(sub)
    _add_prepare(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_run(sub)
    add_score(sub)
    add_experiments(sub)
    add_demo(sub)
    add_serve_outputs(sub)
    add_weights_command(sub)
    add_alerts_command(sub)
    return parser


#: Commands that run a Prefect flow (and so may start Prefect's temporary server).
FLOW_COMMANDS = frozenset({"prepare", "train", "evaluate", "run", "score", "experiments", "demo"})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tomoflow`` console script."""
    from tasks.core.files import OutputInUseError
    from tasks.infra.process_defaults import apply_process_defaults
    from tasks.infra.redaction import redact

    # Before Prefect is imported (it reads the logging defaults once, on import).
    apply_process_defaults()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in FLOW_COMMANDS:
        from flows.prefect_env import apply_prefect_defaults, check_prefect_home

        try:
            # A PREFECT_HOME that cannot be written would surface as a server start-up timeout.
            check_prefect_home()
        except ValueError as exc:
            print(f"tomoflow {args.command}: error: {redact(str(exc))}", file=sys.stderr)
            return 2
        # Before any flow: a first start of the temporary server on a new PREFECT_HOME
        # migrates its database, which outlasts Prefect's default timeout on small machines.
        apply_prefect_defaults()

    if args.command not in ("synth", "export-slices", "serve-outputs", "weights", "alerts"):
        from tasks.infra.lifecycle import start_reaper
        from tasks.infra.prefect_internals import isolate_temporary_server

        # Whatever this process starts (the temporary Prefect server, workers) stops when
        # it dies, even by SIGKILL; Ctrl-C reaches the flow, not the server it reports to.
        start_reaper()
        isolate_temporary_server()
    try:
        return int(args.func(args) or 0)
    except (ValueError, NotImplementedError, FileNotFoundError, OutputInUseError) as exc:
        print(f"tomoflow {args.command}: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:
        from prefect.exceptions import CancelledRun

        if not isinstance(exc, CancelledRun):
            raise
        print(f"tomoflow {args.command}: cancelled: {redact(str(exc))}", file=sys.stderr)
        return 143 if "SIGTERM" in str(exc) else 130
    except KeyboardInterrupt:
        print(f"tomoflow {args.command}: interrupted", file=sys.stderr)
        return 130

if __name__ == "__main__":
    sys.exit(main())
