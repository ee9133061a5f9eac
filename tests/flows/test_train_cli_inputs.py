"""`tomoflow train` / `tomoflow evaluate` through the CLI on inputs from elsewhere: external collections (a
renamed copy of the training one at another image size, manifest image paths leading out, an all-normal
one), weights that are no checkpoint or a run still training, a killed run's rerun; and the patient ids
in the report."""

from __future__ import annotations

import os
import re
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
EVAL_FAST = ("--bootstrap", "10", "--device", "cpu")


def _run(cmd: list[str], home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=_env(home), capture_output=True, text=True, timeout=timeout)


def _prepare(data: Path, out: Path, size: str) -> list[str]:
    return _cli("prepare", "--data-root", str(data), "--out", str(out), "--image-size", size, "--workers", "1",
                "--strategy", "single-slice")


def _train(manifest: Path, out: Path, *extra: str) -> list[str]:
    return _cli("train", "--manifest", str(manifest), "--out", str(out), *TRAIN_FAST, *extra)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train-inputs-home")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("train-inputs") / "data"
    generate_dataset(root, patients=12, seed=5, rows=64, columns=48, frames=(6, 10), positive_fraction=0.4)
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, data: Path, home: Path) -> Path:
    out = tmp_path_factory.mktemp("train-inputs-prepared") / "prepared"
    result = _run(_prepare(data, out, "32"), home)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, prepared: Path, home: Path) -> Path:
    run = tmp_path_factory.mktemp("train-inputs-run") / "run"
    result = _run(_train(prepared / "manifest.parquet", run, "--epochs", "1"), home)
    assert result.returncode == 0, result.stderr[-2000:]
    return run


def test_renamed_training_collection_at_another_size_is_not_generalisation(
        data: Path, trained: Path, home: Path, tmp_path: Path) -> None:
    """Ids renamed, prepared at 48 px (trained at 32 px): stopped by the source DICOMs' hashes."""
    renamed = tmp_path / "renamed"
    shutil.copytree(data, renamed)
    for csv in renamed.glob("BCS-DBT*.csv"):
        table = pd.read_csv(csv, dtype=str)
        table["PatientID"] = table["PatientID"].str.replace("DBT-P", "EXT-P", regex=False)
        table["StudyUID"] = table["StudyUID"].str.replace("DBT-S", "EXT-S", regex=False)
        table.to_csv(csv, index=False)
    (renamed / "reports.csv").unlink()
    prepared = tmp_path / "prepared48"
    result = _run(_prepare(renamed, prepared, "48"), home)
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "ext"
    evaluated = _run(_cli("evaluate", "--run", str(trained), "--external", str(prepared), "--out", str(out),
                          *EVAL_FAST), home)
    assert evaluated.returncode == 2, evaluated.stderr[-2000:]
    assert "Traceback" not in evaluated.stderr
    assert "by id 0 patients" in evaluated.stderr and "by source DICOM" in evaluated.stderr
    assert "by source DICOM 0 volumes" not in evaluated.stderr
    assert not (out / "report.html").exists()


def test_external_manifest_paths_leading_out_stop_naming_the_row(prepared: Path, trained: Path, home: Path,
                                                                 tmp_path: Path) -> None:
    """A row pointing at ../ or an absolute file is never read; the evaluation stops naming it."""
    secret = tmp_path / "secret.png"
    shutil.copyfile(next((prepared / "slices").rglob("*.png")), secret)
    for bad in (os.path.relpath(secret, tmp_path / "copy"), str(secret)):
        copy = tmp_path / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(prepared, copy, ignore=shutil.ignore_patterns(".cache", ".work", ".tomoflow.lock"))
        manifest = pd.read_parquet(copy / "manifest.parquet")
        manifest.loc[3, "image_path"] = bad
        manifest.to_parquet(copy / "manifest.parquet", index=False)
        out = tmp_path / "ext"
        # --allow-overlap: the copy is the training collection; without it the overlap stop would hide the row.
        result = _run(_cli("evaluate", "--run", str(trained), "--external", str(copy / "manifest.parquet"),
                           "--out", str(out), "--allow-overlap", *EVAL_FAST), home)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "row 3" in result.stderr and "outside the manifest's folder" in result.stderr
        assert "Traceback" not in result.stderr
        assert not (out / "report.html").exists()


def test_report_captions_carry_pseudonyms_unless_show_ids(trained: Path, home: Path, tmp_path: Path) -> None:
    """Report.html (what serve-outputs serves) names no patient by default; --show-ids keeps ids."""
    default = tmp_path / "eval"
    result = _run(_cli("evaluate", "--run", str(trained), "--out", str(default), *EVAL_FAST), home)
    assert result.returncode == 0, result.stderr[-2000:]
    html = (default / "report.html").read_text(encoding="utf-8")
    assert re.search(r"P-[0-9a-f]{10}", html), "the examples carry keyed pseudonyms"
    assert (default / ".pseudonym-salt").is_file()
    assert "DBT-P" not in html and "DBT-S" not in html
    kept = tmp_path / "eval-ids"
    result = _run(_cli("evaluate", "--run", str(trained), "--out", str(kept), "--show-ids", *EVAL_FAST), home)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DBT-P" in (kept / "report.html").read_text(encoding="utf-8")


def test_weights_file_that_is_no_checkpoint_gets_one_line(prepared: Path, home: Path, tmp_path: Path) -> None:
    """Our line, not torch's advice to load with weights_only=False."""
    import torch
    from torch import nn

    bogus = tmp_path / "model.pth"
    torch.save(nn.Linear(2, 2), bogus)
    run = tmp_path / "run"
    cmd = [*_train(prepared / "manifest.parquet", run, "--epochs", "1")]
    cmd[cmd.index("none")] = str(bogus)
    result = _run(cmd, home)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "weights_only" not in result.stderr and "Traceback" not in result.stderr
    assert f"weights file '{bogus}' is not a PyTorch state_dict" in result.stderr


def _wait_for_lock_holder(folder: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    lock = folder / ".tomoflow.lock"
    while time.monotonic() < deadline and proc.poll() is None:
        if lock.is_file() and lock.read_text().strip() and (folder / "best.pt").is_file():
            return
        time.sleep(0.2)
    raise AssertionError(f"the first run never held {lock} with a best.pt (rc {proc.poll()})")


def test_transfer_from_a_run_still_training_is_refused(prepared: Path, home: Path, tmp_path: Path) -> None:
    """`train --weights RUN` while RUN trains stops at once, naming the running command."""
    source = tmp_path / "source"
    first = subprocess.Popen(_train(prepared / "manifest.parquet", source, "--epochs", "500", "--no-early-stopping"),
                             cwd=REPO, env=_env(home), start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        _wait_for_lock_holder(source, first)
        cmd = [*_train(prepared / "manifest.parquet", tmp_path / "target", "--epochs", "1")]
        cmd[cmd.index("none")] = str(source)
        second = _run(cmd, home)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"run folder {source} cannot be started from now" in second.stderr
        assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
        assert not (tmp_path / "target" / "best.pt").exists()
        assert first.poll() is None, "the source's training must go on"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGTERM)
            first.wait(timeout=120)


def test_all_normal_external_collection_is_evaluated_with_auc_not_computable(trained: Path, home: Path,
                                                                             tmp_path: Path) -> None:
    """An all-normal screening collection as --external: prepared (not refused by the split rule),
    evaluated with specificity and the score distribution, AUC marked not computable."""
    import json

    from synth.generate import generate_dataset

    normal = tmp_path / "screening"
    generate_dataset(normal, patients=6, seed=7, rows=64, columns=48, frames=(6, 8), positive_fraction=0.0)
    out = tmp_path / "ext"
    result = _run(_cli("evaluate", "--run", str(trained), "--external", str(normal), "--out", str(out),
                       *EVAL_FAST), home)
    assert result.returncode == 0, result.stderr[-3000:]
    external = json.loads((out / "external.json").read_text())["external"]
    assert external["labels"] == [0] and external["figures"]["roc_auc"] is None
    assert external["figures"]["specificity"] is not None
    assert "one class only" in external["not_computable"]["roc_auc"]
    assert 0.0 <= external["score_distribution"]["q50"] <= 1.0
    assert "AUC not computable" in (out / "report.html").read_text(encoding="utf-8")


def _flow_run_state(home: Path, name_prefix: str) -> tuple[str, str] | None:
    """(state type, state message) of the latest flow run named ``name_prefix...`` in the home's database."""
    import sqlite3

    with sqlite3.connect(home / "prefect-home" / "prefect.db") as db:
        row = db.execute("SELECT f.state_type, s.message FROM flow_run f LEFT JOIN flow_run_state s "
                         "ON s.id = f.state_id WHERE f.name LIKE ? ORDER BY f.created DESC LIMIT 1",
                         (name_prefix + "%",)).fetchone()
    return None if row is None else (str(row[0]), str(row[1] or ""))


def test_killed_train_is_marked_crashed_and_the_rerun_names_what_it_supersedes(prepared: Path, tmp_path: Path) -> None:
    """Kill -9 of the command: its flow run ends Crashed (not Running for ever), with a message saying
    the process was killed; the rerun says which earlier run it supersedes."""
    home = tmp_path / "home"  # a database of its own, read after the run
    run = tmp_path / "run"
    cmd = _train(prepared / "manifest.parquet", run, "--epochs", "500", "--no-early-stopping")
    first = subprocess.Popen(cmd, cwd=REPO, env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_lock_holder(run, first)
        first.send_signal(signal.SIGKILL)  # the command only: its reaper, in a session of its own, lives on
        first.wait(timeout=60)
        deadline = time.monotonic() + 120
        state = _flow_run_state(home, "train")
        while time.monotonic() < deadline and (state is None or state[0] == "RUNNING"):
            time.sleep(1)
            state = _flow_run_state(home, "train")
    finally:
        if first.poll() is None:
            first.kill()
    assert state is not None and state[0] == "CRASHED", state
    assert f"pid {first.pid}" in state[1] and "killed" in state[1]
    again = subprocess.Popen(cmd, cwd=REPO, env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    seen = []
    try:
        deadline = time.monotonic() + 300
        for line in again.stderr:
            seen.append(line)
            if "supersedes" in line or time.monotonic() > deadline:
                break
    finally:
        os.killpg(again.pid, signal.SIGTERM)
        again.wait(timeout=120)
    said = "".join(seen)
    assert "supersedes an earlier run" in said and f"pid {first.pid}" in said, said[-3000:]
