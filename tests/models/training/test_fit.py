"""Training loop: data checks, class balancing, fine-tuning schedule, aux loss, resume, early stopping.

VGG16 from scratch at 32 x 32 (its conv base: 14.7 M parameters) with batches of 4 and
``max_batches`` keeps each run to about a second per epoch on two cores.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

import models.training.engine
import models.training.fit
from models.nets.heads import ClassifierOutput
from models.weights.resolve import WeightsNotFoundError
from models.nets.classifier import build_model
from models.training.checkpoint import HISTORY_COLUMNS, load_classifier
from models.training.data import load_manifest, make_loaders
from models.training.engine import apply_schedule, batch_to_device, build_optimizer, train_one_epoch
from models.training.fit import fit
from models.training.augment import train_transforms
from tasks.core.config import AugmentConfig, ModelConfig, TrainConfig, TrainParams
from tests.models.training.test_augment import write_manifest


@pytest.fixture(autouse=True)
def _drop_checkpoints(tmp_path: Path) -> Iterator[None]:
    """pytest keeps recent temp folders; checkpoints are 70-140 MB each."""
    yield
    for path in tmp_path.rglob("*.pt"):
        path.unlink()


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "data")


def make_cfg(manifest: Path, run_dir: Path, **train: object) -> TrainConfig:
    params = {"batch_size": 4, "epochs": 3, "image_size": 32, "num_workers": 0, "max_batches": 2,
              "device": "cpu", **train}
    return TrainConfig(
        manifest=str(manifest),
        run_dir=str(run_dir),
        model=ModelConfig(model="vgg16", weights="none"),
        train=TrainParams(**params),
        augment=AugmentConfig(),
    )


def _history(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "history.csv")


# --------------------------------------------------------------------------------------
# Checks before work
# --------------------------------------------------------------------------------------


def test_missing_imagenet_weights_fail_before_the_manifest_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("network access"))
    cfg = make_cfg(tmp_path / "does-not-exist.parquet", tmp_path / "run").model_copy(
        update={"model": ModelConfig(weights="imagenet")}
    )
    with pytest.raises(WeightsNotFoundError, match="not in torchvision's cache"):
        fit(cfg)
    assert not (tmp_path / "run").exists()


def test_manifest_problems_are_named(tmp_path: Path, manifest: Path) -> None:
    frame = pd.read_parquet(manifest)
    bad = tmp_path / "bad.parquet"

    frame.drop(columns=["split"]).to_parquet(bad)
    with pytest.raises(ValueError, match=r"bad\.parquet.*lacks the columns \['split'\]"):
        load_manifest(bad)
    frame[frame["split"] != "validation"].to_parquet(bad)
    with pytest.raises(ValueError, match="no 'validation' rows"):
        load_manifest(bad)
    frame[(frame["split"] != "train") | (frame["label"] == 0)].to_parquet(bad)
    with pytest.raises(ValueError, match="'train' split holds only label 0"):
        load_manifest(bad)

    victim = frame.loc[frame["split"] == "validation", "image_path"].iloc[1]
    (manifest.parent / victim).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(victim)):
        fit(make_cfg(manifest, tmp_path / "run"))


# --------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------


def test_class_balancing_by_weights_and_by_sampler(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, {"train": (5, 20), "validation": (2, 2)})
    _, _, info = make_loaders(make_cfg(manifest, tmp_path / "run", class_balance="weights"))
    assert info["pos_weight"] == pytest.approx(20 / 5)
    assert (info["n_train_pos"], info["n_train_neg"]) == (5, 20)

    train_loader, _, info = make_loaders(make_cfg(manifest, tmp_path / "run", class_balance="sampler"))
    assert info["pos_weight"] is None
    sampler = train_loader.sampler
    labels = train_loader.dataset.labels
    drawn = []
    for epoch in range(40):
        sampler.set_epoch(epoch)
        drawn += [labels[i] for i, _ in sampler]
    assert len(drawn) == 40 * 25
    assert sum(drawn) / len(drawn) == pytest.approx(0.5, abs=0.05)  # 20 % without the sampler

    _, _, info = make_loaders(make_cfg(manifest, tmp_path / "run", class_balance="none"))
    assert info["pos_weight"] is None


def test_epoch_order_depends_on_seed_and_epoch_only(tmp_path: Path, manifest: Path) -> None:
    loader, _, _ = make_loaders(make_cfg(manifest, tmp_path / "run"))
    sampler = loader.sampler
    sampler.set_epoch(2)
    first = list(sampler)
    sampler.set_epoch(0)
    list(sampler)
    sampler.set_epoch(2)
    assert list(sampler) == first
    sampler.set_epoch(3)
    assert list(sampler) != first
    assert sorted(i for i, _ in first) == list(range(len(loader.dataset)))


def test_batches_do_not_depend_on_the_number_of_workers(tmp_path: Path, manifest: Path) -> None:
    batches = {}
    for workers in (0, 2):
        loader, _, _ = make_loaders(make_cfg(manifest, tmp_path / "run", num_workers=workers))
        loader.sampler.set_epoch(1)
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2]) == 4
    for (x0, y0, r0), (x2, y2, r2) in zip(batches[0], batches[2]):
        assert x0.shape == (4, 1, 32, 32) and x0.dtype == torch.uint8
        assert torch.equal(x0, x2) and torch.equal(y0, y2) and torch.equal(r0, r2)
    assert len(torch.cat([r for _, _, r in batches[0]]).unique()) == 16

    # uint8 batches scaled on the device are the floats the float pipeline gives.
    loader, _, _ = make_loaders(make_cfg(manifest, tmp_path / "run"))
    dataset = loader.dataset
    dataset.transform = train_transforms(AugmentConfig(), 32)
    loader.sampler.set_epoch(1)
    (index, seed), *_ = list(loader.sampler)
    image, _, _ = dataset[(index, seed)]
    assert image.dtype == torch.float32
    assert torch.equal(batch_to_device(batches[0][0][0][:1], torch.device("cpu"))[0], image)


# --------------------------------------------------------------------------------------
# Schedule and losses
# --------------------------------------------------------------------------------------


def test_backbone_frozen_then_fine_tuned_at_a_lower_rate(tmp_path: Path, manifest: Path) -> None:
    cfg = make_cfg(manifest, tmp_path / "run", freeze_epochs=1, unfreeze_lr_factor=0.1, lr=0.01, max_batches=1)
    loader, _, _ = make_loaders(cfg)
    model = build_model(model="vgg16", weights=None, image_size=32, seed=0)
    optimizer = build_optimizer(model, cfg.train)
    assert [g["name"] for g in optimizer.param_groups] == ["head", "backbone"]

    def snapshot(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
        return [p.detach().clone() for p in params]

    backbone0, head0 = snapshot(model.backbone_parameters()), snapshot(model.head_parameters())
    apply_schedule(model, optimizer, cfg.train, 0)
    assert optimizer.param_groups[1]["lr"] == 0.0 and not model.backbone_trainable
    train_one_epoch(model, loader, optimizer, torch.device("cpu"), max_batches=1)
    assert all(torch.equal(a, b) for a, b in zip(backbone0, model.backbone_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(head0, model.head_parameters()))

    apply_schedule(model, optimizer, cfg.train, 1)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.01 * 0.1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    assert model.backbone_trainable
    train_one_epoch(model, loader, optimizer, torch.device("cpu"), max_batches=1)
    assert any(not torch.equal(a, b) for a, b in zip(backbone0, model.backbone_parameters()))

    # Without a frozen phase the whole network trains at lr, as in the study.
    no_freeze = make_cfg(manifest, tmp_path / "run", freeze_epochs=0, lr=0.01)
    apply_schedule(model, optimizer, no_freeze.train, 0)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.01)


def test_inception_trains_with_its_auxiliary_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_loss = models.training.engine.classification_loss

    def spy(output, target, **kwargs):
        calls.append((type(output), kwargs.get("aux_weight")))
        return real_loss(output, target, **kwargs)

    monkeypatch.setattr(models.training.engine, "classification_loss", spy)
    model = build_model(model="inception_v3", weights=None, image_size=299, seed=0)
    assert model.aux_head is not None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.rand(2, 1, 299, 299)
    batch = [(x, torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))]
    train_one_epoch(model, batch, optimizer, torch.device("cpu"))
    assert calls == [(ClassifierOutput, 0.4)]
    grad = model.aux_head.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


# --------------------------------------------------------------------------------------
# The run: files, resume, early stopping, config checks
# --------------------------------------------------------------------------------------


def test_killed_run_resumes_to_the_same_history_and_weights(tmp_path: Path, manifest: Path) -> None:
    # Crosses the unfreezing boundary and uses dropout, augmentation and momentum.
    common = {"freeze_epochs": 1, "lr": 0.01}
    straight = make_cfg(manifest, tmp_path / "straight", **common)
    result = fit(straight)
    assert result["epochs_run"] == 3 and result["resumed_from"] == 0

    cfg = make_cfg(manifest, tmp_path / "killed", **common)

    def kill(epoch: int, batch: int) -> None:
        if (epoch, batch) == (2, 0):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(cfg, on_batch=kill)
    assert len(_history(tmp_path / "killed")) == 1
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["epoch"] == 1

    # The retry runs with loader workers: the ignored field doesn't change the numbers.
    seen = []
    resumed = fit(cfg.model_copy(update={"train": cfg.train.model_copy(update={"num_workers": 2})}),
                  progress=lambda epoch, row: seen.append(epoch))
    assert resumed["resumed_from"] == 1 and seen == [2, 3]

    a, b = _history(tmp_path / "straight"), _history(tmp_path / "killed")
    assert list(a.columns) == HISTORY_COLUMNS
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"), rtol=0, atol=1e-6)
    assert a["backbone_lr"].tolist() == pytest.approx([0.0, 0.001, 0.001])
    wa = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["model"]
    assert all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-6) for k in wa)


def test_run_folder_contents(tmp_path: Path, manifest: Path) -> None:
    run = tmp_path / "run"
    result = fit(make_cfg(manifest, run, epochs=1))
    names = sorted(p.name for p in run.iterdir())
    assert names == ["best.pt", "config.json", "history.csv", "last.pt"]
    assert not any(re.search(r"-[0-9a-f]{8,64}\.pth$", n) for n in names)
    assert result["best"] == str(run / "best.pt") and result["best_epoch"] == 1
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["config"] == make_cfg(manifest, run, epochs=1).model_dump(mode="json")
    # The entries and their order are the checkpoint format (tomoflow-train/1).
    assert list(last) == [
        "format", "epoch", "model", "model_config", "optimizer", "scheduler", "config", "history", "best_val_loss",
        "best_epoch", "epochs_without_improvement", "stopped_early", "rng", "manifest_fingerprint", "samples",
        "training_data", "weights_source", "world_size", "rank",
    ]
    best = torch.load(run / "best.pt", weights_only=True)
    assert list(best) == ["format", "epoch", "model", "model_config", "config", "val_loss", "val_accuracy",
                          "training_data", "weights_source", "world_size", "rank"]
    # What the model saw and where it started: hashed ids, never ids in clear.
    assert best["training_data"] == last["training_data"] and best["weights_source"]["kind"] == "none"
    assert best["val_loss"] == last["history"][0]["val_loss"] == last["best_val_loss"]
    model = load_classifier(run / "best.pt")
    assert not model.training and model(torch.rand(2, 1, 32, 32)).shape == (2,)


def test_early_stopping_after_patience_epochs_without_improvement(
    tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    losses = iter([1.0, 0.9, 0.95, 0.91, 0.8, 0.7])

    def fake_evaluate(*args: object, **kwargs: object) -> dict[str, float]:
        return {"loss": next(losses), "accuracy": 0.5, "n": 8}

    monkeypatch.setattr(models.training.fit, "evaluate", fake_evaluate)
    cfg = make_cfg(manifest, tmp_path / "run", epochs=10, patience=2, max_batches=1)
    result = fit(cfg)
    assert result["stopped_early"] and result["epochs_run"] == 4
    assert result["best_epoch"] == 2 and result["best_val_loss"] == 0.9
    assert _history(tmp_path / "run")["val_loss"].tolist() == [1.0, 0.9, 0.95, 0.91]

    # A finished run is not trained again.
    monkeypatch.setattr(models.training.fit, "train_one_epoch", lambda *a, **k: pytest.fail("trained again"))
    again = fit(cfg)
    assert again["stopped_early"] and again["epochs_run"] == 4 and again["resumed_from"] == 4


def test_early_stopping_waits_for_min_steps_and_a_capped_run_says_so(
    tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The validation loss never improves after epoch 1: patience 2 alone would stop after epoch 3.
    losses = iter([0.5] + [0.9] * 20)
    monkeypatch.setattr(models.training.fit, "evaluate", lambda *a, **k: {"loss": next(losses), "accuracy": 0.5, "n": 8})
    cfg = make_cfg(manifest, tmp_path / "run", epochs=10, patience=2, max_batches=1)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"min_steps": 5})})
    result = fit(cfg)
    # One step per epoch (max_batches 1): the run goes on to 5 steps before early stopping may end it.
    assert result["stopped_early"] and result["epochs_run"] == 5 and result["optimizer_steps"] == 5
    assert result["best_epoch"] == 1
    assert result["capped"]  # max_batches limited every epoch

    # Without max_batches, a run that reaches train.epochs before early stopping is capped; one that stops is not.
    losses = iter([0.5, 0.4, 0.3])
    short = make_cfg(manifest, tmp_path / "short", epochs=3, patience=2, max_batches=None)
    done = fit(short)
    assert done["capped"] and not done["stopped_early"] and done["optimizer_steps"] >= 3
    losses = iter([0.5, 0.9, 0.9, 0.9])
    stopped = fit(make_cfg(manifest, tmp_path / "stopped", epochs=4, patience=2, max_batches=None))
    assert stopped["stopped_early"] and not stopped["capped"]


def test_resume_refuses_another_configuration(tmp_path: Path, manifest: Path) -> None:
    run = tmp_path / "run"
    fit(make_cfg(manifest, run, epochs=1, max_batches=1))
    changed = make_cfg(manifest, run, epochs=1, max_batches=1, lr=0.01).model_copy(
        update={"model": ModelConfig(model="vgg16", weights="none", head="dense4")}
    )
    with pytest.raises(ValueError, match=r"model\.head.*train\.lr.*new run_dir"):
        fit(changed)
    # Where and how long it runs doesn't matter: two more epochs continue the run.
    more = fit(make_cfg(manifest, run, epochs=3, max_batches=1, num_workers=1, device="auto"))
    assert more["resumed_from"] == 1 and more["epochs_run"] == 3
    # Other manifest content is refused too.
    frame = pd.read_parquet(manifest)
    frame.iloc[::-1].to_parquet(manifest, index=False)
    with pytest.raises(ValueError, match="manifest content"):
        fit(make_cfg(manifest, run, epochs=4, max_batches=1))
