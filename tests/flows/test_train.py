"""The train-classifier flow: a tiny model for 2 epochs on a generated dataset, then resume."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tasks.core.config import DataConfig, ModelConfig, PrepareConfig, SlicesConfig, TrainConfig, TrainParams


@pytest.fixture(scope="module")
def prepared(prefect_harness, small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flows.prepare import prepare_data

    out = tmp_path_factory.mktemp("prepared-for-train")
    config = PrepareConfig(data=DataConfig(data_root=str(small_dataset), output_dir=str(out)),
                           slices=SlicesConfig(strategy="all-slices", image_size=48, executor="serial"))
    return Path(prepare_data(config=config)["manifest"])


def _train_config(manifest: Path, run: Path, **train) -> TrainConfig:
    return TrainConfig(
        manifest=str(manifest), run_dir=str(run),
        model=ModelConfig(model="vgg16", weights="none", head="single"),
        train=TrainParams(**{"epochs": 2, "batch_size": 8, "image_size": 32, "max_batches": 2,
                             "num_workers": 0, "device": "cpu", **train}),
    )


def test_train_flow_two_epochs_then_rerun_resumes(prefect_harness, prepared: Path, tmp_path: Path,
                                                  monkeypatch) -> None:
    from flows.train import train_classifier

    run = tmp_path / "run"
    result = train_classifier(config=_train_config(prepared, run))
    history = pd.read_csv(result["history"])
    assert list(history["epoch"]) == [1, 2]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(history.columns)
    assert Path(result["best"]).is_file() and Path(result["last"]).is_file()
    assert result["resumed_from"] == 0

    # The rerun reuses the stored result: it neither trains nor loads a checkpoint.
    import models.training.fit

    monkeypatch.setattr(models.training.fit, "fit", lambda *a, **k: pytest.fail("a cached rerun must not train"))
    again = train_classifier(config=_train_config(prepared, run))
    assert again["resumed_from"] == 2 and again["epochs_run"] == 2
    assert pd.read_csv(again["history"]).equals(history)

    # With a file of the stored result gone, the model is fitted again.
    monkeypatch.undo()
    Path(result["last"]).unlink()
    third = train_classifier(config=_train_config(prepared, run))
    assert Path(third["last"]).is_file() and third["resumed_from"] == 0


def test_train_cli_offline_weights_error_names_the_file(prepared: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from flows.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    code = main(["train", "--manifest", str(prepared), "--out", str(tmp_path / "run"), "--weights", "imagenet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "vgg16-397923af.pth" in err and str(tmp_path / "empty-torch-home") in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_several_visible_gpus_train_with_torchrun(prefect_harness, monkeypatch, tmp_path: Path) -> None:
    import torch

    import models.training.distributed
    from tasks.train.steps import fit_model, visible_gpus as _visible_gpus

    cfg = _train_config(tmp_path / "m.parquet", tmp_path / "run", device="auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert _visible_gpus(cfg) == 4
    assert _visible_gpus(cfg.model_copy(update={"train": cfg.train.model_copy(update={"multi_gpu": False})})) == 0
    assert _visible_gpus(cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": "cpu"})})) == 0

    launched = {}

    def fake_torchrun(config, nproc):
        launched["nproc"] = nproc
        return {"history": "h.csv", "epochs_run": 0}

    monkeypatch.setattr(models.training.distributed, "train_with_torchrun", fake_torchrun)
    from prefect.logging import disable_run_logger

    with disable_run_logger():
        result = fit_model.fn(cfg)
    assert launched == {"nproc": 4} and result["epochs_run"] == 0
