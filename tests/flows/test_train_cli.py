"""`tomoflow train` / `tomoflow evaluate` as a user runs them, under faults: a leak, a corrupt PNG, truncated
checkpoints, a second run while one trains, SIGTERM during evaluate."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.flows.cli_env import REPO
from tests.flows.cli_env import cli_command as _cli
from tests.flows.cli_env import cli_env as _env
TRAIN_FAST = ("--weights", "none", "--batch-size", "4", "--image-size", "32", "--max-batches", "1",
              "--num-workers", "0", "--device", "cpu", "--no-augment")


def _run(cmd: list[str], home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=_env(home), capture_output=True, text=True, timeout=timeout)


def _train(manifest: Path, out: Path, *extra: str) -> list[str]:
    return _cli("train", "--manifest", str(manifest), "--out", str(out), *TRAIN_FAST, *extra)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train-cli-home")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, home: Path) -> Path:
    from synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("train-cli")
    generate_dataset(root / "data", patients=12, seed=5, rows=64, columns=48, frames=(6, 10), positive_fraction=0.4)
    out = root / "prepared"
    result = _run(_cli("prepare", "--data-root", str(root / "data"), "--out", str(out), "--image-size", "32",
                       "--workers", "1", "--strategy", "single-slice"), home)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, prepared: Path, home: Path) -> Path:
    run = tmp_path_factory.mktemp("train-cli-run") / "run"
    result = _run(_train(prepared / "manifest.parquet", run, "--epochs", "1"), home)
    assert result.returncode == 0, result.stderr[-2000:]
    return run


def _copy_prepared(prepared: Path, tmp_path: Path) -> Path:
    target = tmp_path / "prepared"
    shutil.copytree(prepared, target, ignore=shutil.ignore_patterns(".cache", ".work", ".tomoflow.lock"))
    return target


def test_train_repeats_the_leak_audit(prepared: Path, home: Path, tmp_path: Path) -> None:
    """Test rows copied into train: train stops before any epoch, naming the leak."""
    copy = _copy_prepared(prepared, tmp_path)
    manifest = pd.read_parquet(copy / "manifest.parquet")
    leaked = manifest[manifest["split"] == "test"].assign(split="train")
    pd.concat([manifest, leaked]).to_parquet(copy / "manifest.parquet", index=False)
    run = tmp_path / "run"
    result = _run(_train(copy / "manifest.parquet", run, "--epochs", "1"), home)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "leak audit" in result.stderr and f"{leaked['patient_id'].nunique()} patient_id" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (run / "last.pt").exists()


def test_corrupt_png_is_named_before_any_epoch(prepared: Path, home: Path, tmp_path: Path) -> None:
    """A corrupt PNG: one line naming the image and its manifest row, no epoch run."""
    copy = _copy_prepared(prepared, tmp_path)
    manifest = pd.read_parquet(copy / "manifest.parquet")
    row = int(manifest.index[manifest["split"] == "train"][0])
    (copy / manifest.loc[row, "image_path"]).write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    run = tmp_path / "run"
    result = _run(_train(copy / "manifest.parquet", run, "--epochs", "1"), home)
    assert result.returncode == 2, result.stderr[-2000:]
    line = [x for x in result.stderr.splitlines() if x.startswith("tomoflow train: error:")]
    assert line and f"row {row}" in line[0] and manifest.loc[row, "image_path"] in line[0]
    assert "Traceback" not in result.stderr and not (run / "last.pt").exists()


def test_truncated_checkpoints_give_one_line(trained: Path, prepared: Path, home: Path, tmp_path: Path) -> None:
    """A truncated last.pt (resume) or best.pt (evaluate): one line naming the file and what to do."""
    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns(".cache", ".tomoflow.lock"))
    for name in ("last.pt", "best.pt"):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 2])
    resumed = _run(_train(prepared / "manifest.parquet", run, "--epochs", "2"), home)
    assert resumed.returncode == 2, resumed.stderr[-2000:]
    assert f"checkpoint '{run / 'last.pt'}' is truncated or damaged" in resumed.stderr
    assert "delete it" in resumed.stderr and "Traceback" not in resumed.stderr
    evaluated = _run(_cli("evaluate", "--run", str(run), "--bootstrap", "10", "--device", "cpu"), home)
    assert evaluated.returncode == 2, evaluated.stderr[-2000:]
    assert f"checkpoint '{run / 'best.pt'}' is truncated or damaged" in evaluated.stderr
    assert "Traceback" not in evaluated.stderr


def test_evaluate_completes_without_cancelled_error(trained: Path, home: Path, tmp_path: Path) -> None:
    """A successful run on the temporary server prints no CancelledError traceback."""
    out = tmp_path / "eval"
    result = _run(_cli("evaluate", "--run", str(trained), "--out", str(out), "--bootstrap", "10",
                       "--device", "cpu"), home)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Finished in state Completed" in result.stderr
    assert "CancelledError" not in result.stderr and "Traceback" not in result.stderr


def _wait_for_lock_holder(folder: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    lock = folder / ".tomoflow.lock"
    while time.monotonic() < deadline and proc.poll() is None:
        if lock.is_file() and lock.read_text().strip():
            return
        time.sleep(0.1)
    raise AssertionError(f"the first run never held {lock} (rc {proc.poll()})")


def test_second_train_and_evaluate_stop_while_training(prepared: Path, home: Path, tmp_path: Path) -> None:
    """A second train into the same --out, or an evaluate of it, stops at once naming the first."""
    run = tmp_path / "run"
    first = subprocess.Popen(_train(prepared / "manifest.parquet", run, "--epochs", "500", "--no-early-stopping"),
                             cwd=REPO, env=_env(home), start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        _wait_for_lock_holder(run, first)
        second = _run(_train(prepared / "manifest.parquet", run, "--epochs", "3", "--lr", "0.1"), home)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"pid {first.pid}" in second.stderr and "tomoflow train" in second.stderr
        evaluated = _run(_cli("evaluate", "--run", str(run), "--bootstrap", "10", "--device", "cpu"), home)
        assert evaluated.returncode == 2, evaluated.stderr[-2000:]
        assert f"run folder {run} cannot be evaluated now" in evaluated.stderr and f"pid {first.pid}" in evaluated.stderr
        assert first.poll() is None, "the first run must go on"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGTERM)
            first.wait(timeout=120)
    assert first.returncode == 143  # SIGTERM ends training as Cancelled


def test_sigterm_during_evaluate_ends_cancelled(trained: Path, home: Path, tmp_path: Path) -> None:
    """SIGTERM during evaluate ends the flow run Cancelled (exit 143), not Crashed."""
    out = tmp_path / "eval"
    proc = subprocess.Popen(_cli("evaluate", "--run", str(trained), "--out", str(out), "--bootstrap", "2000000",
                                 "--device", "cpu"), cwd=REPO, env=_env(home), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (out / "predictions.parquet").exists() and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, "evaluate ended before the signal"
        time.sleep(2)
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr[-3000:]
    # The flow run ends Cancelled; a task still in flight at the signal may itself show Crashed.
    assert "Finished in state Cancelled" in stderr
    assert not [line for line in stderr.splitlines() if "Flow run" in line and "Crashed" in line], stderr[-3000:]
    assert "cancelled: interrupted by SIGTERM" in stderr
