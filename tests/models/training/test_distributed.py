"""Data-parallel training: sharding, per-rank batches, and real ``torchrun`` jobs on the CPU (gloo).

The ``torchrun`` tests start two processes on this machine with the gloo backend: VGG16
from scratch at 32 x 32, batches of 4 (2 per rank), 2 batches per epoch, 2 epochs, the
first with the backbone frozen, so the DDP wrapper is rebuilt at the unfreeze. Each job
takes 10-30 s on two cores, most of it starting Python and torch three times.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist

from models.training import distributed
from models.training.data import EpochSampler, make_loaders
from models.training.distributed import DistEnv, Group, current_env, launch_command, per_rank_batch_size
from models.training.fit import fit
from tasks.core.config import AugmentConfig, ModelConfig, TrainConfig, TrainParams
from tests.models.training.test_augment import write_manifest

ROOT = Path(__file__).resolve().parents[3]
TIMEOUT_S = 240

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this torch build has no torch.distributed with the gloo backend, which the CPU torchrun tests need",
)


def make_cfg(manifest: Path, run_dir: Path, **train: object) -> TrainConfig:
    params = {"batch_size": 4, "epochs": 2, "image_size": 32, "num_workers": 0, "max_batches": 2,
              "device": "cpu", "freeze_epochs": 1, **train}
    return TrainConfig(
        manifest=str(manifest),
        run_dir=str(run_dir),
        # No dropout: then a 2-rank run computes what one process computes, up to rounding.
        model=ModelConfig(model="vgg16", weights="none", dropout=0.0),
        train=TrainParams(**params),
        augment=AugmentConfig(),
    )


def torchrun(nproc: int, script: list[str], *, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node=N SCRIPT...`` from this virtualenv, in the repository."""
    exe = Path(sys.executable).with_name("torchrun")
    launcher = [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return subprocess.run(
        [*launcher, "--standalone", f"--nproc_per_node={nproc}", *script],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )


def _explain(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit status {done.returncode}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-8000:]}"


# --------------------------------------------------------------------------------------
# Sharding and per-rank batches (no processes started)
# --------------------------------------------------------------------------------------


def test_shares_wrap_around_to_equal_lengths_and_cover_everything() -> None:
    single = EpochSampler(7, seed=1)
    order = list(single)
    shares = [list(EpochSampler(7, seed=1, num_replicas=3, rank=r)) for r in range(3)]
    # DistributedSampler's padding: the order repeated from its start up to a multiple of 3.
    assert shares == [(order + order[:2])[r::3] for r in range(3)]
    # Fewer items than ranks: still one each.
    lone = list(EpochSampler(1, seed=1))
    assert [list(EpochSampler(1, seed=1, num_replicas=4, rank=r)) for r in range(4)] == [lone] * 4


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("weights", [None, torch.tensor([1.0] * 6 + [3.0] * 10)])
def test_each_step_of_the_ranks_together_is_the_single_process_batch(world: int, weights: torch.Tensor | None) -> None:
    batch = 4
    single = EpochSampler(16, seed=3, weights=weights)
    ranks = [EpochSampler(16, seed=3, weights=weights, num_replicas=world, rank=r) for r in range(world)]
    for epoch in (0, 5):
        single.set_epoch(epoch)
        for sampler in ranks:
            sampler.set_epoch(epoch)
        order = list(single)
        shares = [list(s) for s in ranks]
        assert {len(s) for s in shares} == {len(ranks[0])} == {16 // world}
        per_rank = batch // world
        for step in range(16 // batch):
            together = sorted(p for s in shares for p in s[step * per_rank:(step + 1) * per_rank])
            # The same images with the same augmentation seeds.
            assert together == sorted(order[step * batch:(step + 1) * batch])


def test_uneven_epochs_are_padded_so_every_rank_takes_as_many_steps() -> None:
    ranks = [EpochSampler(10, seed=0, num_replicas=4, rank=r) for r in range(4)]
    shares = [list(s) for s in ranks]
    assert [len(s) for s in shares] == [3, 3, 3, 3] == [len(s) for s in ranks]
    drawn = [i for s in shares for i, _ in s]
    assert set(drawn) == set(range(10)) and len(drawn) == 12
    with pytest.raises(ValueError, match=r"rank 4 is not in \[0, num_replicas=4\)"):
        EpochSampler(10, seed=0, num_replicas=4, rank=4)


def test_batch_size_is_the_global_batch_and_must_split_evenly() -> None:
    assert per_rank_batch_size(64, 4) == 16 and per_rank_batch_size(5, 1) == 5
    with pytest.raises(ValueError, match=r"batch_size 6 cannot be split evenly over 4 .*multiple of 4 \(e\.g\. 4 or 8"):
        per_rank_batch_size(6, 4)


def test_loaders_of_one_rank(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, {"train": (4, 12), "validation": (3, 4)})
    cfg = make_cfg(manifest, tmp_path / "run", max_batches=None)
    val_rows = []
    for rank in range(2):
        train_loader, val_loader, info = make_loaders(cfg, rank=rank, world_size=2)
        assert info["batch_size_per_rank"] == 2 and info["world_size"] == 2 and info["n_train"] == 16
        train_loader.sampler.set_epoch(0)
        assert [len(y) for _, y, _ in train_loader] == [2, 2, 2, 2]
        val_rows += [int(r) for _, _, rows in val_loader for r in rows]
    # Validation: every image once over the ranks, no padding.
    assert sorted(val_rows) == sorted(make_loaders(cfg)[1].dataset.rows.tolist())


def test_environment_of_a_torchrun_process() -> None:
    assert current_env({}) == DistEnv() and not current_env({"WORLD_SIZE": "1", "RANK": "0"}).enabled
    env = current_env({"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    assert env == DistEnv(world_size=8, rank=5, local_rank=1, local_world_size=4) and env.enabled
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        current_env({"WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="RANK=2 / LOCAL_RANK=2 is outside WORLD_SIZE=2"):
        current_env({"WORLD_SIZE": "2", "RANK": "2"})


def test_a_single_process_group_does_nothing() -> None:
    group = Group(DistEnv(), torch.device("cpu"))
    module = torch.nn.Linear(2, 1)
    assert group.wrap(module) is module and group.is_writer and group.world_size == 1
    result = {"loss": 0.5, "accuracy": 0.25, "n": 8}
    assert group.sum_metrics(result) == result and group.max(1.5) == 1.5
    group.check_in_sync(module)
    group.barrier()
    assert not dist.is_initialized()


def test_launch_command() -> None:
    assert launch_command(4, ["--config", Path("runs/m1/config.json")], python="python") == [
        "python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
        "-m", "models.training.torchrun_entry", "--config", "runs/m1/config.json",
    ]
    with pytest.raises(ValueError, match="nproc 0"):
        launch_command(0, [])


def test_fit_under_torchrun_refuses_a_batch_that_does_not_split_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "3"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="batch_size 4 cannot be split evenly over 3"):
        fit(make_cfg(tmp_path / "absent.parquet", tmp_path / "run"))
    assert not (tmp_path / "run").exists() and not dist.is_initialized()


def test_main_reports_a_bad_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from models.training.torchrun_entry import main

    bad = tmp_path / "config.json"
    bad.write_text('{"train": {"batch_size": 0}}')
    assert main(["--config", str(bad)]) == 2
    assert "batch_size" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# torchrun, two processes, gloo
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TrainConfig, Path]]:
    """Two epochs on two ranks: ``torchrun -m models.training.torchrun_entry --config CONFIG``."""
    root = tmp_path_factory.mktemp("ddp")
    manifest = write_manifest(root / "data")
    cfg = make_cfg(manifest, root / "run")
    config = root / "config.json"
    config.write_text(cfg.model_dump_json(), encoding="utf-8")
    done = torchrun(2, ["-m", "models.training.torchrun_entry", "--config", str(config)])
    assert done.returncode == 0, _explain(done)
    yield cfg, config
    # Checkpoints are 70-140 MB each; pytest keeps recent temp folders.
    for path in root.rglob("*.pt"):
        path.unlink()


@needs_gloo
def test_torchrun_trains_on_two_ranks_and_only_rank_0_writes(ddp_run: tuple[TrainConfig, Path]) -> None:
    cfg, _ = ddp_run
    run = Path(cfg.run_dir)
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "history.csv", "last.pt"]
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert all(math.isfinite(v) for c in ("train_loss", "val_loss") for v in history[c])
    assert history["backbone_lr"].tolist() == [0.0, pytest.approx(cfg.train.lr * cfg.train.unfreeze_lr_factor)]
    last = torch.load(run / "last.pt", weights_only=True)
    best = torch.load(run / "best.pt", weights_only=True)
    assert (last["world_size"], last["rank"]) == (2, 0) and (best["world_size"], best["rank"]) == (2, 0)
    assert last["epoch"] == 2 and pd.DataFrame(last["history"])["train_loss"].tolist() == history["train_loss"].tolist()
    assert last["config"] == cfg.model_dump(mode="json")


@needs_gloo
def test_two_ranks_see_and_compute_what_one_process_does(
    ddp_run: tuple[TrainConfig, Path], tmp_path: Path
) -> None:
    cfg, _ = ddp_run
    single_run = tmp_path / "single"
    fit(cfg.model_copy(update={"run_dir": str(single_run)}))
    ddp = torch.load(Path(cfg.run_dir) / "last.pt", weights_only=True)
    one = torch.load(single_run / "last.pt", weights_only=True)
    # Images per epoch, summed over the ranks: 2 steps x 2 ranks x 2 images = 2 steps x 4.
    assert [(s["train"], s["validation"]) for s in ddp["samples"]] == [(8, 8), (8, 8)]
    assert [(s["train"], s["validation"]) for s in one["samples"]] == [(8, 8), (8, 8)]
    assert [s["world_size"] for s in ddp["samples"]] == [2, 2]
    # Same batches, averaged gradients: the same run up to rounding (no dropout here).
    columns = ["train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "backbone_lr"]
    a, b = pd.DataFrame(ddp["history"])[columns], pd.DataFrame(one["history"])[columns]
    pd.testing.assert_frame_equal(a, b, rtol=1e-4, atol=1e-6)
    for name, weight in one["model"].items():
        torch.testing.assert_close(ddp["model"][name], weight, rtol=1e-4, atol=1e-5, msg=name)
    for path in single_run.glob("*.pt"):
        path.unlink()


@needs_gloo
def test_a_second_torchrun_resumes_without_new_epochs(ddp_run: tuple[TrainConfig, Path]) -> None:
    cfg, config = ddp_run
    run = Path(cfg.run_dir)
    before = {name: (run / name).stat().st_mtime_ns for name in ("last.pt", "best.pt", "history.csv")}
    done = torchrun(2, ["-m", "models.training.torchrun_entry", "--config", str(config)])
    assert done.returncode == 0, _explain(done)
    assert '"resumed_from": 2' in done.stdout and '"epochs_run": 2' in done.stdout
    assert "already complete" in done.stderr
    assert {name: (run / name).stat().st_mtime_ns for name in before} == before

    # The same from Python, as a Prefect task would start it.
    result = distributed.train_with_torchrun(cfg, 2, timeout=TIMEOUT_S)
    assert result["resumed_from"] == 2 and result["epochs_run"] == 2 and result["world_size"] == 2
    assert result["best"] == str(run / "best.pt")
    assert {name: (run / name).stat().st_mtime_ns for name in before} == before


@needs_gloo
def test_replicas_that_drift_apart_stop_the_run(tmp_path: Path) -> None:
    """Without rebuilding DDP at the unfreeze, the backbone's gradients aren't averaged: caught."""
    manifest = write_manifest(tmp_path / "data")
    cfg = make_cfg(manifest, tmp_path / "run")
    config = tmp_path / "config.json"
    config.write_text(cfg.model_dump_json(), encoding="utf-8")
    script = tmp_path / "never_rebuild.py"
    script.write_text(
        "import sys\n"
        "from models.training import distributed\n"
        "build = distributed.Group.wrap\n"
        "distributed.Group.wrap = lambda self, m: self._wrapped if self._wrapped is not None else build(self, m)\n"
        "from models.training.torchrun_entry import main\n"
        "sys.exit(main())\n",
        encoding="utf-8",
    )
    done = torchrun(2, [str(script), "--config", str(config)])
    assert done.returncode != 0, _explain(done)
    assert "the model replicas differ between the 2 ranks" in done.stderr and "backbone.features" in done.stderr
    # Epoch 2 was never committed: a fixed code resumes from epoch 1.
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1
    for path in tmp_path.rglob("*.pt"):
        path.unlink()


def test_distributed_module_exports() -> None:
    assert set(distributed.__all__) <= set(dir(distributed))
