"""The `tomoflow` command line: synth, export-slices and error reporting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from flows.cli import main


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "data"
    assert main(["synth", str(root), "--patients", "20", "--seed", "2", "--rows", "64", "--columns", "48",
                 "--frames", "6-8"]) == 0
    return root


def test_synth_writes_bcs_dbt_layout(synth_root: Path, capsys) -> None:
    names = {p.name for p in synth_root.glob("*.csv")}
    assert "BCS-DBT file-paths-train-v2.csv" in names and "BCS-DBT-labels-validation-v2.csv" in names
    assert (synth_root / "reports.csv").is_file()
    assert len(list((synth_root / "Breast-Cancer-Screening-DBT").rglob("1-1.dcm"))) >= 60


def test_export_slices_files_and_json_lines(synth_root: Path, tmp_path: Path, capsys) -> None:
    dcm = sorted((synth_root / "Breast-Cancer-Screening-DBT").rglob("1-1.dcm"))[0]
    out = tmp_path / "frames"
    assert main(["export-slices", str(dcm), "--out", str(out), "--frames", "0,2", "--view", "rcc",
                 "--image-size", "40"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [rec["frame"] for rec in lines] == [0, 2]
    for rec in lines:
        assert {"frame", "path", "window_center", "window_width", "window_source", "rotated", "scale",
                "pad_x", "pad_y"} <= set(rec)
        assert rec["window_source"] == "shared"
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0002.png"]
    with Image.open(out / "0002.png") as im:
        assert im.mode == "L" and im.size == (40, 40)


def test_export_slices_reduced_by_default_full_resolution_on_request(synth_root: Path, tmp_path: Path,
                                                                    capsys) -> None:
    dcm = sorted((synth_root / "Breast-Cancer-Screening-DBT").rglob("1-1.dcm"))[0]  # 64 x 48 rows
    records = {}
    for name, extra in (("auto", []), ("full", ["--full-resolution"])):
        assert main(["export-slices", str(dcm), "--out", str(tmp_path / name), "--frames", "1",
                     "--image-size", "32", *extra]) == 0
        (records[name],) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records["auto"]["decode_level"] == 1 and records["full"]["decode_level"] == 0
    for key in ("scale", "pad_x", "pad_y", "window_center", "window_width", "rotated"):
        assert records["auto"][key] == records["full"][key]


def test_prepare_cli_full_resolution_reaches_the_config() -> None:
    from flows.cli import build_parser
    from flows.cli_config import prepare_config_from_args

    args = build_parser().parse_args(["prepare", "--data-root", "d", "--out", "o", "--full-resolution"])
    assert prepare_config_from_args(args).slices.full_resolution is True
    args = build_parser().parse_args(["prepare", "--data-root", "d", "--out", "o"])
    assert prepare_config_from_args(args).slices.full_resolution is False


def test_export_slices_native_size_all_frames(synth_root: Path, tmp_path: Path, capsys) -> None:
    dcm = sorted((synth_root / "Breast-Cancer-Screening-DBT").rglob("1-1.dcm"))[0]
    assert main(["export-slices", str(dcm), "--out", str(tmp_path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) >= 6 and all(rec["scale"] == 1.0 and rec["rotated"] is False for rec in lines)
    with Image.open(tmp_path / "0000.png") as im:
        assert im.size == (48, 64)


def test_bad_file_gives_clear_error_and_exit_code(tmp_path: Path, capsys) -> None:
    bogus = tmp_path / "not-dicom.dcm"
    bogus.write_bytes(b"hello" * 100)
    assert main(["export-slices", str(bogus), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not-dicom.dcm" in err and "error" in err


def test_prepare_rejects_bad_configuration_before_work(tmp_path: Path, capsys) -> None:
    assert main(["prepare", "--data-root", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--normal-fraction", "1.5"]) == 2
    assert "normal_fraction" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("preset", ["no-such-preset", "configs/demo.yaml"])
def test_run_refuses_an_unknown_preset_or_a_path_before_prefect_and_leaves_no_folder(
        preset: str, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.pipeline

    monkeypatch.setattr(flows.pipeline, "tomoflow_pipeline", lambda **kw: pytest.fail("the flow started"))
    out = tmp_path / "out"
    assert main(["run", "--data-root", str(tmp_path), "--out", str(out), "--preset", preset]) == 2
    err = capsys.readouterr().err
    assert f"unknown preset '{preset}'" in err and "cpu-scratch" in err and "Traceback" not in err
    assert not out.exists()


def test_run_takes_set_and_epochs_over_the_preset(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.pipeline
    from tasks.core.presets import pipeline_config

    seen: dict = {}
    monkeypatch.setattr(flows.pipeline, "tomoflow_pipeline", lambda **kw: seen.update(kw) or {"ok": True})
    out = tmp_path / "out"
    assert main(["run", "--data-root", str(tmp_path), "--out", str(out), "--preset", "cpu-scratch", "--epochs", "3",
                 "--set", "train.lr=0.01", "--set", "slices.seed=4"]) == 0
    assert seen["preset"] == "cpu-scratch"
    assert seen["config"] == {"train": {"lr": 0.01, "epochs": 3}, "slices": {"seed": 4}}
    cfg = pipeline_config(preset="cpu-scratch", base=seen["config"])
    # The preset's recipe (scratch resnet18, 96 px, flips only) stays under the settings given.
    assert (cfg.model.model, cfg.model.weights, cfg.train.image_size, cfg.augment.max_rotation) == (
        "resnet18", "none", 96, 0.0)
    assert (cfg.train.epochs, cfg.train.lr, cfg.slices.seed) == (3, 0.01, 4)
    # A setting the configuration refuses stops before the flow, in one line, and leaves no folder.
    bad = tmp_path / "bad"
    assert main(["run", "--data-root", str(tmp_path), "--out", str(bad), "--set", "train.no_such_field=1"]) == 2
    err = capsys.readouterr().err
    assert "no_such_field" in err and "Traceback" not in err and not bad.exists()


def test_train_without_imagenet_weights_stops_before_its_folder_or_prefect(tmp_path: Path, capsys,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.train

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setattr(flows.train, "train_classifier", lambda **kw: pytest.fail("the flow started"))
    out = tmp_path / "run"
    manifest = tmp_path / "manifest.parquet"
    manifest.write_bytes(b"")
    assert main(["train", "--manifest", str(manifest), "--out", str(out), "--model", "resnet18",
                 "--weights", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert "resnet18-f37072fd.pth" in err and "--weights none" in err and "Traceback" not in err
    assert not out.exists()
