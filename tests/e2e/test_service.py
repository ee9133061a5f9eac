"""End to end, the way the users run it: a real Prefect server, work pools, deployments, workers.

Runs alone with ``pytest -m e2e``. The commands are the README's "Running it as a service".
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # A wide "terminal", so that rich does not cut the tables' cells.
    result = subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env={**env, "COLUMNS": "300"},
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """`prefect server start` on loopback with a temporary PREFECT_HOME; stopped by PID at the end."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_UI_ENABLED": "false",
                "TOMOFLOW_HOME": str(REPO)})
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "prefect server did not start in 120 s"
            time.sleep(0.5)
        yield env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def _flow_run_state(env: dict[str, str], flow_run_id: str) -> str:
    out = _prefect(["flow-run", "inspect", flow_run_id, "--output", "json"], env).stdout
    return json.loads(out)["state"]["type"]


def test_deployments_pools_workers_and_adhoc_retrain(server: dict[str, str], tmp_path: Path) -> None:
    env = server
    from tasks.synthetic import generate_dataset

    data = tmp_path / "data"
    generate_dataset(data, patients=20, seed=7, rows=64, columns=48, frames=(6, 9), positive_fraction=0.4)
    outputs = tmp_path / "outputs"

    _prefect(["work-pool", "create", "cpu-pool", "--type", "process"], env)
    _prefect(["work-pool", "create", "gpu-pool", "--type", "process"], env)
    _prefect(["--no-prompt", "deploy", "--all"], env)

    run = _prefect(["deployment", "run", "tomoflow-pipeline/adhoc-retrain", "--param", f"data_root={data}",
                    "--param", f"output_root={outputs}", "--param", "preset=demo"], env).stdout
    flow_run_id = next(line.split()[-1] for line in run.splitlines() if "UUID" in line)

    # The CPU worker runs the pipeline; the pipeline hands training to the GPU pool, whose
    # worker is started (--run-once) until that training run has been picked up and done.
    cpu = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "cpu-pool", "--run-once"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    deadline = time.monotonic() + 900
    try:
        state = _flow_run_state(env, flow_run_id)
        while state not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") and time.monotonic() < deadline:
            subprocess.run([str(BIN / "prefect"), "worker", "start", "--pool", "gpu-pool", "--run-once"],
                           cwd=tmp_path, env=env, capture_output=True, timeout=600)
            time.sleep(1)
            state = _flow_run_state(env, flow_run_id)
        cpu_log = cpu.communicate(timeout=300)[0]
    finally:
        if cpu.poll() is None:
            os.killpg(cpu.pid, signal.SIGKILL)
    assert state == "COMPLETED", f"pipeline ended {state}:\n{cpu_log[-4000:]}"

    run_dirs = list((outputs / "runs").iterdir())
    assert len(run_dirs) == 1
    record = json.loads((run_dirs[0] / "run.json").read_text())
    for key in ("manifest", "checkpoint", "metrics", "report"):
        assert Path(record[key]).is_file(), key
    assert (run_dirs[0] / "evaluation" / "report.html").is_file()

    artifacts = _prefect(["artifact", "ls"], env).stdout
    for key in ("evaluation-metrics", "evaluation-summary", "cohort-flow", "pipeline-outputs"):
        assert key in artifacts, key

    # The deployments read back from the server: schedules and parameters as in prefect.yaml.
    nightly = json.loads(_prefect(["deployment", "inspect", "tomoflow-pipeline/nightly", "--output", "json"], env).stdout)
    crons = [s["schedule"]["cron"] for s in nightly["schedules"]]
    assert crons == ["0 2 * * *"]
    assert nightly["parameters"]["config"]["train_deployment"] == "train-classifier/gpu-train"
    assert nightly["work_pool_name"] == "cpu-pool"
    adhoc = json.loads(_prefect(["deployment", "inspect", "tomoflow-pipeline/adhoc-retrain", "--output", "json"], env).stdout)
    assert adhoc["schedules"] == []
    gpu = json.loads(_prefect(["deployment", "inspect", "train-classifier/gpu-train", "--output", "json"], env).stdout)
    assert gpu["work_pool_name"] == "gpu-pool"
    assert gpu["job_variables"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    listed = _prefect(["deployment", "ls"], env).stdout
    for preset in ("m1-baseline", "m1-augment", "m1-dense4", "m1-adam", "m2-baseline", "m2-inception",
                   "m2-inception-scratch"):
        assert f"tomoflow-pipeline/{preset}" in listed
