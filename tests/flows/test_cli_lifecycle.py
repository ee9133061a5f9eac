"""The `tomoflow` command as a process under faults: kill -9 and SIGTERM leave nothing running and the rerun
resumes, a second run is refused, a bad --out fails at once, and report bytes with PHI leak nowhere."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.flows.cli_env import REPO
from tests.flows.cli_env import cli_command as _cli
from tests.flows.cli_env import cli_env as _env
NAME, BIRTH, BIRTH_DICOM, MRN = "Quixote", "1957-03-14", "19570314", "44175521"
SECRETS = [NAME.encode(), BIRTH.encode(), BIRTH_DICOM.encode(), MRN.encode()]


def _prepare(data: Path, out: Path, *extra: str) -> list[str]:
    return _cli("prepare", "--data-root", str(data), "--out", str(out), "--image-size", "32",
                "--workers", "1", *extra)


def _session_processes(session: int) -> list[str]:
    """Command lines of live processes in ``session`` (and reapers watching its leader)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z":
            continue
        if int(fields[3]) == session or ("lifecycle import reap" in cmd and f" {session} " in cmd):
            found.append(f"{entry}: {cmd[:200]}")
    return found


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else int(fields[19])


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def _kill_and_check_quiet(proc: subprocess.Popen, out: Path) -> None:
    """SIGKILL the command alone; 20 s later nothing it started lives and nothing changes."""
    from tasks.infra.lifecycle import descendants

    family = descendants(proc.pid)  # the temporary server runs in a session of its own
    assert family, "the command should have started a server and workers"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    time.sleep(20)
    assert _session_processes(proc.pid) == []
    survivors = [pid for pid, start in family.items() if _start_time(pid) == start]
    assert survivors == []
    before = _snapshot(out)
    time.sleep(3)
    assert _snapshot(out) == before


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not reached before the command ended (rc {proc.poll()})")


@pytest.fixture(scope="module")
def cli_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("cli-data")
    generate_dataset(root, patients=12, seed=5, rows=96, columns=72, frames=(16, 24), positive_fraction=0.4)
    return root


def test_bad_report_byte_rejects_one_row_and_no_phi_anywhere(cli_dataset: Path, tmp_path: Path) -> None:
    import pydicom

    data = tmp_path / "data"
    import shutil

    shutil.copytree(cli_dataset, data)
    dicom = sorted(data.rglob("*.dcm"))[0]
    ds = pydicom.dcmread(dicom)
    ds.PatientName = f"{NAME}^Johanna"
    ds.PatientBirthDate = BIRTH_DICOM
    ds.OtherPatientIDs = MRN
    ds.save_as(dicom)
    reports = data / "reports.csv"
    phi = f"{NAME} Johanna born {BIRTH} MRN {MRN}".encode()
    with reports.open("ab") as fh:
        fh.write(b'R900001,DBT-P00001,DBT-S00001,radiology,2015-02-03,"' + phi + b' tomosynthesis BI-RADS 2"\n')
        fh.write(b'R900002,DBT-P00001,DBT-S00001,radiology,2015-02-03,"' + phi + b' \xff\xfe tomosynthesis"\n')

    out = tmp_path / "out"
    env = _env(tmp_path)
    result = subprocess.run(_prepare(data, out, "--reports", str(reports), "--executor", "serial"), cwd=REPO,
                            env=env, capture_output=True, timeout=900)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    import pandas as pd

    rejects = pd.read_parquet(out / "rejects.parquet")
    undecodable = rejects[rejects["reason"].str.startswith("undecodable")]
    assert undecodable["report_id"].tolist() == ["R900002"]
    assert re.search(r"reports\.csv row \d+ \(line \d+\): byte 0xff in column 'text'", undecodable["reason"].iloc[0])

    places = {"stdout": result.stdout, "stderr": result.stderr}
    places.update({str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    places.update({str(p): p.read_bytes() for p in (tmp_path / "prefect-home").rglob("*") if p.is_file()})
    assert any(p.endswith(".db") for p in places), "Prefect's database should be under PREFECT_HOME"
    leaks = [(where, s) for where, blob in places.items() for s in SECRETS if s in blob]
    assert leaks == []


@pytest.fixture(scope="module")
def slow_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Frames big and many enough that extraction with one worker outlasts a second command's start.

    The tests that use it pass ``--full-resolution``: a reduced decode of these frames is so cheap
    that the plan would finish (in the flow's own process) before a kill could land mid-extraction.
    """
    from synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("slow-data")
    generate_dataset(root, patients=10, seed=6, rows=512, columns=392, frames=(40, 50), reports=False)
    return root


def test_kill_mid_extraction_second_run_refused_nothing_survives_rerun_resumes(slow_dataset: Path,
                                                                               tmp_path: Path) -> None:
    env = _env(tmp_path)
    out = tmp_path / "out"
    cli_dataset = slow_dataset
    proc = subprocess.Popen(_prepare(cli_dataset, out, "--normal-fraction", "1.0", "--full-resolution"), cwd=REPO, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = lambda: len(list((out / "slices").rglob("volume.json"))) if (out / "slices").exists() else 0  # noqa: E731
    try:
        _wait_for(lambda: records() >= 1, proc)
        second = subprocess.run(_prepare(cli_dataset, out, "--strategy", "single-slice"), cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert f"in use by another tomoflow run (pid {proc.pid}" in second.stderr
        assert "Starting temporary server" not in second.stderr  # it stopped before any work
        assert proc.poll() is None
        at_kill = records()
        _kill_and_check_quiet(proc, out)
        assert records() <= at_kill + 1  # the volume in hand may finish before the worker notices
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (out / "manifest.parquet").exists()

    rerun = subprocess.run(_prepare(cli_dataset, out, "--normal-fraction", "1.0", "--full-resolution"), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    total = records()
    assert at_kill < total, f"the kill should land mid-extraction ({at_kill} of {total} volumes done)"
    assert "reused from earlier runs" in rerun.stdout + rerun.stderr
    assert [p for p in out.rglob("*.tmp")] == []


def test_sigterm_cancels_cleans_up_and_rerun_resumes(slow_dataset: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen(_prepare(slow_dataset, out, "--normal-fraction", "1.0", "--full-resolution"), cwd=REPO, env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = lambda: len(list((out / "slices").rglob("volume.json"))) if (out / "slices").exists() else 0  # noqa: E731
    try:
        _wait_for(lambda: records() >= 1, proc)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Finished in state Cancelled" in stderr and "cancelled: interrupted by SIGTERM" in stderr
    assert not (out / "manifest.parquet").exists() and list(out.rglob("*.tmp")) == []
    time.sleep(5)
    assert _session_processes(proc.pid) == []
    rerun = subprocess.run(_prepare(slow_dataset, out, "--normal-fraction", "1.0", "--full-resolution"), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "reused from earlier runs" in rerun.stdout + rerun.stderr


def test_kill_mid_training_leaves_nothing_running(cli_dataset: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    prepared = tmp_path / "prepared"
    subprocess.run(_prepare(cli_dataset, prepared, "--strategy", "single-slice", "--executor", "serial"),
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=900)
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _cli("train", "--manifest", str(prepared / "manifest.parquet"), "--out", str(run), "--weights", "none",
             "--epochs", "500", "--no-early-stopping", "--batch-size", "4", "--image-size", "32",
             "--max-batches", "1", "--num-workers", "1", "--device", "cpu", "--no-augment"),
        cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (run / "last.pt").exists(), proc, timeout=600)
        _kill_and_check_quiet(proc, run)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_unwritable_out_fails_at_once_without_retries(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    data = tmp_path / "data"
    data.mkdir()
    for out, reason in ((a_file, "is a file"), (a_file / "under", "which is a file")):
        result = subprocess.run(_prepare(data, out), cwd=REPO, env=_env(tmp_path), capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 2
        assert f"--out {out}" in result.stderr and reason in result.stderr
        assert "Traceback" not in result.stderr and "Retry" not in result.stderr
        assert "Starting temporary server" not in result.stderr
