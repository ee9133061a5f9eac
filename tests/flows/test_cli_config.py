"""The CLI's config-backed options against the pydantic config models: no option drifts, and each is
checked before any work (run as a user runs the command: no Prefect server starts)."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Any

import pytest

from flows.cli_config import (
    CONFIG_OPTIONS,
    INVERTING,
    NOT_CONFIG,
    option_description,
    evaluate_config_from_args,
    prepare_config_from_args,
    train_config_from_args,
)
from flows.cli import build_parser
from tasks.core.config import EvaluateConfig
from tests.flows.cli_env import REPO, cli_command, cli_env

REQUIRED = {
    "prepare": ["--data-root", "d", "--out", "o"],
    "train": ["--manifest", "m.parquet", "--out", "r"],
    "evaluate": ["--run", "r"],
}

#: A value for each option that differs from the default, as typed on the command line,
#: and what the config field must then hold.
SAMPLES: dict[str, dict[str, tuple[list[str], Any]]] = {
    "prepare": {
        "data_root": (["--data-root", "elsewhere"], "elsewhere"),
        "extra_data_root": (["--extra-data-root", "/mnt/a", "--extra-data-root", "/mnt/b"], ("/mnt/a", "/mnt/b")),
        "out": (["--out", "outdir"], "outdir"),
        "strategy": (["--strategy", "lesion-slices"], "lesion-slices"),
        "image_size": (["--image-size", "64"], 64),
        "seed": (["--seed", "5"], 5),
        "normal_fraction": (["--normal-fraction", "0.5"], 0.5),
        "reports": (["--reports", "r.csv"], "r.csv"),
        "no_labels": (["--no-labels"], False),
        "workers": (["--workers", "3"], 3),
        "executor": (["--executor", "serial"], "serial"),
        "full_resolution": (["--full-resolution"], True),
        "max_reject_fraction": (["--max-reject-fraction", "0.5"], 0.5),
        "reports_encoding": (["--reports-encoding", "cp1252"], "cp1252"),
    },
    "train": {
        "manifest": (["--manifest", "x.parquet"], "x.parquet"),
        "out": (["--out", "run2"], "run2"),
        "model": (["--model", "inception_v3"], "inception_v3"),
        "weights": (["--weights", "none"], "none"),
        "head": (["--head", "dense4"], "dense4"),
        "optimizer": (["--optimizer", "adam"], "adam"),
        "epochs": (["--epochs", "3"], 3),
        "batch_size": (["--batch-size", "8"], 8),
        "image_size": (["--image-size", "64"], 64),
        "patience": (["--patience", "4"], 4),
        "no_early_stopping": (["--no-early-stopping"], None),
        "lr": (["--lr", "0.01"], 0.01),
        "freeze_epochs": (["--freeze-epochs", "2"], 2),
        "seed": (["--seed", "9"], 9),
        "max_batches": (["--max-batches", "2"], 2),
        "num_workers": (["--num-workers", "1"], 1),
        "device": (["--device", "cpu"], "cpu"),
        "no_augment": (["--no-augment"], False),
        "balance": (["--balance"], True),
        "transfer": (["--transfer", "backbone"], "backbone"),
    },
    "evaluate": {
        "run": (["--run", "r2"], "r2"),
        "manifest": (["--manifest", "m2.parquet"], "m2.parquet"),
        "out": (["--out", "ev"], "ev"),
        "split": (["--split", "validation"], "validation"),
        "aggregate": (["--aggregate", "mean"], "mean"),
        "threshold": (["--threshold", "0.3"], 0.3),
        "bootstrap": (["--bootstrap", "10"], 10),
        "seed": (["--seed", "4"], 4),
        "device": (["--device", "cpu"], "cpu"),
        "allow_overlap": (["--allow-overlap"], True),
        "external": (["--external", "other/"], "other"),
        "external_split": (["--external-split", "test"], "test"),
        "show_ids": (["--show-ids"], True),
        "data_root": (["--data-root", "dicoms"], "dicoms"),
        "threshold_rule": (["--threshold-rule", "youden"], "youden"),
        "threshold_target": (["--threshold-target", "0.95"], 0.95),
        "frame_stride": (["--frame-stride", "3"], 3),
        "topk": (["--topk", "5"], 5),
    },
}


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _built(command: str, argv: list[str]) -> Any:
    args = build_parser().parse_args([command, *argv])
    if command == "prepare":
        config = prepare_config_from_args(args)
        return {m: getattr(config, s) for m, s in (("DataConfig", "data"), ("SlicesConfig", "slices"),
                                                     ("ReportsConfig", "reports"))}
    if command == "train":
        config = train_config_from_args(args)
        return {"TrainConfig": config, "ModelConfig": config.model, "TrainParams": config.train,
                "AugmentConfig": config.augment}
    return {"EvaluateConfig": evaluate_config_from_args(args)}


@pytest.mark.parametrize("command", sorted(CONFIG_OPTIONS))
def test_every_option_maps_to_a_field_with_its_description_and_choices(command: str) -> None:
    options = {a.dest: a for a in _subparser(command)._actions}
    assert set(options) - NOT_CONFIG == set(CONFIG_OPTIONS[command]), (
        "a new option must be listed in flows.cli.CONFIG_OPTIONS with the field it sets")
    for dest, (model, field) in CONFIG_OPTIONS[command].items():
        info = model.model_fields[field]  # KeyError: the field was renamed or removed
        if dest in INVERTING.get(command, ()):  # a flag that turns the field off says so in its own words
            assert options[dest].help and info.description not in options[dest].help, dest
        else:
            # The field's description, with the command's other fields named by their options.
            described = option_description(command, model, field)
            assert info.description and described.replace("%", "%%") in options[dest].help, dest
            assert described.split()[:2] == info.description.split()[:2], dest
        literal = getattr(info.annotation, "__args__", None)
        if options[dest].choices is not None:
            assert list(options[dest].choices) == list(literal), dest


@pytest.mark.parametrize("command", sorted(SAMPLES))
def test_each_option_lands_in_its_field(command: str) -> None:
    assert set(SAMPLES[command]) == set(CONFIG_OPTIONS[command])
    for dest, (argv, expected) in SAMPLES[command].items():
        model, field = CONFIG_OPTIONS[command][dest]
        default = getattr(_built(command, REQUIRED[command])[model.__name__], field)
        base = list(REQUIRED[command])
        if argv[0] in base:  # replace a required option's value
            i = base.index(argv[0])
            base[i:i + 2] = argv
            argv = []
        value = getattr(_built(command, [*base, *argv])[model.__name__], field)
        assert value == expected and value != default, (dest, value, default)


def test_option_defaults_are_the_models_defaults() -> None:
    # With no options, the configs the CLI builds equal the models' defaults (paths aside).
    built = _built("prepare", REQUIRED["prepare"])
    assert built["SlicesConfig"] == type(built["SlicesConfig"])()
    assert built["ReportsConfig"] == type(built["ReportsConfig"])()
    train = _built("train", REQUIRED["train"])
    for name in ("ModelConfig", "TrainParams", "AugmentConfig"):
        assert train[name] == type(train[name])(), name
    evaluate = _built("evaluate", REQUIRED["evaluate"])["EvaluateConfig"]
    assert evaluate == EvaluateConfig(run_dir="r")


def test_demo_refuses_an_image_size_it_would_not_use(capsys: pytest.CaptureFixture[str]) -> None:
    # The demo preset fixes the sizes; an option that was accepted and ignored misled callers.
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["demo", "--image-size", "64"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --image-size 64" in capsys.readouterr().err
    assert all(a.dest != "image_size" for a in _subparser("demo")._actions)


def _run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), cwd=REPO, env=cli_env(tmp_path), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args", [
    ("export-slices", "{dcm}", "--out", "{out}", "--image-size", "100000"),
    ("prepare", "--data-root", "{out}", "--out", "{out}", "--image-size", "4096"),
    ("train", "--manifest", "{out}/m.parquet", "--out", "{out}", "--image-size", "100000"),
    ("experiments", "--data-root", "{out}", "--out", "{out}", "--image-size", "0"),
])
def test_image_size_has_a_documented_bound_checked_before_any_work(args: tuple[str, ...], tmp_path: Path) -> None:
    """Every --image-size is bounded (2048 for PNGs, 1024 for the network), one line, exit 2."""
    dcm = tmp_path / "x.dcm"
    dcm.write_bytes(b"not read")
    result = _run_cli(tmp_path, *(a.format(dcm=dcm, out=tmp_path / "o") for a in args))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "--image-size" in last and "expected an integer from" in last
    assert not (tmp_path / "o").exists()  # nothing written
