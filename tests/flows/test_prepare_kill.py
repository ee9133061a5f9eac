"""A `tomoflow prepare` killed with SIGKILL mid-extraction resumes to the same manifest bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _prepare_cmd(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "prepare", "--data-root", str(data), "--out", str(out),
            "--strategy", "all-slices", "--normal-fraction", "1.0", "--image-size", "64", "--workers", "1"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env.pop("PREFECT_API_URL", None)
    return env


@pytest.fixture(scope="module")
def kill_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("kill-data")
    generate_dataset(root, patients=24, seed=11, rows=96, columns=72, frames=(20, 30), reports=False)
    return root


def test_sigkill_mid_extraction_then_rerun_gives_identical_manifest(kill_dataset: Path, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    env = _env(tmp_path)
    reference = tmp_path / "reference"
    subprocess.run(_prepare_cmd(kill_dataset, reference), cwd=repo, env=env, check=True,
                   capture_output=True, timeout=600)
    total = len(list((reference / "slices").rglob("volume.json")))
    assert total > 20

    out = tmp_path / "killed"
    proc = subprocess.Popen(_prepare_cmd(kill_dataset, out), cwd=repo, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    done = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = len(list((out / "slices").rglob("volume.json"))) if (out / "slices").exists() else 0
            if done >= 3:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert 3 <= done < total, f"the kill should land mid-extraction ({done} of {total} volumes done)"
    assert not (out / "manifest.parquet").exists()

    rerun = subprocess.run(_prepare_cmd(kill_dataset, out), cwd=repo, env=env, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "reused from earlier runs" in rerun.stdout + rerun.stderr
    assert (out / "manifest.parquet").read_bytes() == (reference / "manifest.parquet").read_bytes()
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_process_pool_workers_share_the_temporary_api_only_during_extraction(monkeypatch) -> None:
    import os as os_module

    import tasks.infra.runners as runtime

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(runtime, "ephemeral_api_url", lambda: "http://127.0.0.1:9/api")
    with runtime.workers_see_ephemeral_api():
        assert os_module.environ["PREFECT_API_URL"] == "http://127.0.0.1:9/api"
    assert "PREFECT_API_URL" not in os_module.environ
