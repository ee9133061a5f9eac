"""The CLI's config-backed options: which config field each sets, its help from the field, and the
configs built from parsed options (``tomoflow prepare / train / evaluate``)."""

from __future__ import annotations

import argparse
import re
from typing import Any, Callable, Literal, get_args, get_origin

from pydantic import BaseModel

from tasks.core.config import (
    AugmentConfig,
    DataConfig,
    EvaluateConfig,
    ModelConfig,
    PrepareConfig,
    ReportsConfig,
    SlicesConfig,
    TrainConfig,
    TrainParams,
)
from tasks.core.weights_setting import WeightsSetting

#: Which config field each config-backed option of a flow command sets: ``{command: {dest:
#: (model, field)}}``. The option's help is the field's description and its choices the
#: field's ``Literal`` values; ``tests/flows/test_cli_config.py`` checks that every option of
#: these commands is listed here (or in :data:`NOT_CONFIG`) and lands in its field, so an
#: option cannot drift from the model.
CONFIG_OPTIONS: dict[str, dict[str, tuple[type[BaseModel], str]]] = {
    "prepare": {
        "data_root": (DataConfig, "data_root"),
        "extra_data_root": (DataConfig, "extra_data_roots"),
        "out": (DataConfig, "output_dir"),
        "strategy": (SlicesConfig, "strategy"),
        "image_size": (SlicesConfig, "image_size"),
        "seed": (SlicesConfig, "seed"),
        "normal_fraction": (SlicesConfig, "normal_fraction"),
        "reports": (DataConfig, "reports"),
        "no_labels": (DataConfig, "use_labels"),  # inverted
        "workers": (SlicesConfig, "workers"),
        "executor": (SlicesConfig, "executor"),
        "full_resolution": (SlicesConfig, "full_resolution"),
        "max_reject_fraction": (DataConfig, "max_reject_fraction"),
        "reports_encoding": (ReportsConfig, "encoding"),
    },
    "train": {
        "manifest": (TrainConfig, "manifest"),
        "out": (TrainConfig, "run_dir"),
        "model": (ModelConfig, "model"),
        "weights": (ModelConfig, "weights"),
        "transfer": (ModelConfig, "transfer"),
        "head": (ModelConfig, "head"),
        "optimizer": (TrainParams, "optimizer"),
        "epochs": (TrainParams, "epochs"),
        "batch_size": (TrainParams, "batch_size"),
        "image_size": (TrainParams, "image_size"),
        "patience": (TrainParams, "patience"),
        "no_early_stopping": (TrainParams, "patience"),  # sets it to None
        "lr": (TrainParams, "lr"),
        "freeze_epochs": (TrainParams, "freeze_epochs"),
        "seed": (TrainParams, "seed"),
        "max_batches": (TrainParams, "max_batches"),
        "num_workers": (TrainParams, "num_workers"),
        "device": (TrainParams, "device"),
        "no_augment": (AugmentConfig, "online"),  # inverted
        "balance": (AugmentConfig, "offline_balance"),
    },
    "evaluate": {
        "run": (EvaluateConfig, "run_dir"),
        "manifest": (EvaluateConfig, "manifest"),
        "out": (EvaluateConfig, "output_dir"),
        "split": (EvaluateConfig, "split"),
        "aggregate": (EvaluateConfig, "aggregate"),
        "threshold": (EvaluateConfig, "threshold"),
        "bootstrap": (EvaluateConfig, "bootstrap"),
        "seed": (EvaluateConfig, "seed"),
        "device": (EvaluateConfig, "device"),
        "allow_overlap": (EvaluateConfig, "allow_overlap"),
        "external": (EvaluateConfig, "external"),
        "external_split": (EvaluateConfig, "external_split"),
        "show_ids": (EvaluateConfig, "show_ids"),
        "data_root": (EvaluateConfig, "data_root"),
        "threshold_rule": (EvaluateConfig, "threshold_rule"),
        "threshold_target": (EvaluateConfig, "threshold_target"),
        "frame_stride": (EvaluateConfig, "frame_stride"),
        "topk": (EvaluateConfig, "topk"),
    },
}

#: Options of the flow commands above that set no config field (argparse's own ``help``).
NOT_CONFIG: frozenset[str] = frozenset({"help", "func"})

#: Flags that turn their field off (or to none): their help says so in its own words instead of
#: repeating the field's description, which describes the setting they invert.
INVERTING: dict[str, frozenset[str]] = {"prepare": frozenset({"no_labels"}),
                                        "train": frozenset({"no_early_stopping", "no_augment"})}


def option_description(command: str, model: type[BaseModel], field: str) -> str:
    """The field's description as the command's help says it: another field of the command named by
    its option (``threshold_rule`` -> ``--threshold-rule``; fields with an underscore only, so plain
    words stay words)."""
    description = model.model_fields[field].description or ""
    for dest, (_, other) in CONFIG_OPTIONS[command].items():
        if "_" in other and other != field and dest not in INVERTING.get(command, ()):
            description = re.sub(rf"(?<![\w.-]){other}(?!\w)", "--" + dest.replace("_", "-"), description)
    return description


def _field_help(command: str, model: type[BaseModel], field: str, note: str = "") -> str:
    """The help of an option: the field's description, then ``note`` (whole sentences, e.g. the default)."""
    description = option_description(command, model, field).replace("%", "%%")
    return f"{description} {note}" if note else description


def _field_choices(model: type[BaseModel], field: str) -> list[str] | None:
    """The values of a ``Literal`` field, in the model's order (None for other types)."""
    annotation = model.model_fields[field].annotation
    return list(get_args(annotation)) if get_origin(annotation) is Literal else None


def image_size_arg(low: int, high: int) -> Callable[[str], int]:
    """An argparse type for ``--image-size``: an integer in ``low..high``, checked before any work."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer from {low} to {high} (pixels per side)")
        return value

    return parse


def field_bounds(model: type[BaseModel], field: str) -> tuple[int, int]:
    """The ``ge`` and ``le`` bounds of an int field (for an option checked by argparse)."""
    low, high = None, None
    for item in model.model_fields[field].metadata:
        low = getattr(item, "ge", None) if getattr(item, "ge", None) is not None else low
        high = getattr(item, "le", None) if getattr(item, "le", None) is not None else high
    assert low is not None and high is not None, (model, field)
    return int(low), int(high)


def config_option(p: argparse.ArgumentParser, flag: str, command: str, *, note: str = "",
                  help: str | None = None, **kwargs: Any) -> None:
    """Add a config-backed option: help and choices from its field (see :data:`CONFIG_OPTIONS`).

    ``note`` (whole sentences) follows the field's description; ``help`` replaces it, for the
    flags of :data:`INVERTING` only.
    """
    dest = flag.lstrip("-").replace("-", "_")
    model, field = CONFIG_OPTIONS[command][dest]
    assert (help is not None) == (dest in INVERTING.get(command, ())), (command, flag)
    if kwargs.get("action") not in ("store_true", "store_false") and "choices" not in kwargs:
        choices = _field_choices(model, field)
        if choices:
            kwargs["choices"] = choices
    p.add_argument(flag, help=help if help is not None else _field_help(command, model, field, note), **kwargs)


def prepare_config_from_args(args: argparse.Namespace) -> PrepareConfig:
    """Build the ``prepare-data`` configuration from CLI options (validated before any work)."""
    slices: dict[str, object] = {
        "strategy": args.strategy,
        "image_size": args.image_size,
        "seed": args.seed,
        "normal_fraction": args.normal_fraction,
    }
    if getattr(args, "full_resolution", False):
        slices["full_resolution"] = True
    if args.workers:
        slices["workers"] = args.workers
    if args.executor:
        slices["executor"] = args.executor
    data: dict[str, object] = {}
    if getattr(args, "max_reject_fraction", None) is not None:
        data["max_reject_fraction"] = args.max_reject_fraction
    reports: dict[str, object] = {}
    if getattr(args, "reports_encoding", None):
        reports["encoding"] = args.reports_encoding
    return PrepareConfig(
        data=DataConfig(
            data_root=str(args.data_root),
            extra_data_roots=tuple(str(p) for p in getattr(args, "extra_data_root", None) or ()),
            output_dir=str(args.out),
            reports=str(args.reports) if args.reports else None,
            use_labels=not args.no_labels,
            **data,
        ),
        slices=SlicesConfig(**slices),
        reports=ReportsConfig(**reports),
    )


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build the ``train-classifier`` configuration from CLI options."""
    train: dict[str, object] = {"optimizer": args.optimizer, "device": args.device}
    for name in ("epochs", "batch_size", "image_size", "patience", "lr", "freeze_epochs", "seed",
                 "max_batches", "num_workers"):
        value = getattr(args, name, None)
        if value is not None:
            train[name] = value
    if getattr(args, "no_early_stopping", False):
        train["patience"] = None
    weights = WeightsSetting.verify(args.weights)  # a refused value stops here in one line (ValueError)
    return TrainConfig(
        manifest=str(args.manifest),
        run_dir=str(args.out),
        model=ModelConfig(model=args.model, weights=weights, head=args.head,
                          **({"transfer": args.transfer} if getattr(args, "transfer", None) else {})),
        train=TrainParams(**train),
        augment=AugmentConfig(online=not args.no_augment, offline_balance=args.balance),
    )


def evaluate_config_from_args(args: argparse.Namespace) -> EvaluateConfig:
    """Build the ``evaluate-model`` configuration from CLI options."""
    fields: dict[str, object] = {"run_dir": str(args.run), "split": args.split, "aggregate": args.aggregate,
                                 "device": args.device}
    if getattr(args, "allow_overlap", False):
        fields["allow_overlap"] = True
    if getattr(args, "external", None) is not None:
        fields["external"] = str(args.external)
    if getattr(args, "external_split", None):
        fields["external_split"] = args.external_split
    if getattr(args, "show_ids", False):
        fields["show_ids"] = True
    for name in ("threshold_rule", "threshold_target", "frame_stride", "topk"):
        if getattr(args, name, None) is not None:
            fields[name] = getattr(args, name)
    if getattr(args, "data_root", None) is not None:
        fields["data_root"] = str(args.data_root)
    for name in ("manifest", "out", "bootstrap", "threshold", "seed"):
        value = getattr(args, name)
        if value is not None:
            fields["output_dir" if name == "out" else name] = str(value) if name in ("manifest", "out") else value
    return EvaluateConfig(**fields)


def setting_arg(text: str) -> tuple[str, str, object]:
    """``--set train.epochs=2`` as ``("train", "epochs", 2)`` (the value read as YAML)."""
    import yaml

    key, sep, value = text.partition("=")
    section, dot, field = key.strip().partition(".")
    if not (sep and dot and section and field):
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected SECTION.FIELD=VALUE, e.g. train.epochs=2")
    return section, field, yaml.safe_load(value)
