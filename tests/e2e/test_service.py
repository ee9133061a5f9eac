"""End to end, the way the operators run it: the README's "Running it as a service" on PostgreSQL.

Runs alone with ``pytest -m e2e``. The test reads the README's service block and runs it,
line by line in one bash, with its own paths and ports substituted (and ``make install`` /
``.venv`` pointed at the interpreter running the tests when this checkout has no ``.venv``).
The Prefect server's database is the PostgreSQL that ``.ci/run`` starts and exports as
``TOMOFLOW_TEST_DATABASE_URL``; without one the test is skipped, saying so. Then it triggers
``nightly`` with its defaults (as its schedule would), a run with an unknown preset and
checks states and messages; the README's own last line is the ad-hoc run on a 12-patient
dataset.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DB_VAR = "TOMOFLOW_TEST_DATABASE_URL"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_service_block() -> list[str]:
    """The lines of the README's service block (the first bash block of the section)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Running it as a service"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README: no bash block under 'Running it as a service'"
    return [line for line in block.group(1).splitlines() if line.strip()]


def _script(lines: list[str], subs: dict[str, str]) -> str:
    out = ["set -e"]
    for line in lines:
        if line.startswith("make install") and not (REPO / ".venv" / ".installed").is_file():
            out.append(":  # make install: the tests already run in an installed interpreter")
            continue
        if line.startswith("prefect deployment run"):
            continue  # run by the test itself, to read the run's id and wait for it
        for old, new in subs.items():
            line = line.replace(old, new)
        out.append(line)
    return "\n".join(out) + "\n"


def _prefect(args: list[str], env: dict[str, str], timeout: float = 300,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    # A wide "terminal", so that rich does not cut the tables' cells.
    result = subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env={**env, "COLUMNS": "300"},
                            capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, (f"prefect {' '.join(args)} failed:\n{result.stdout[-3000:]}\n"
                                        f"{result.stderr[-3000:]}")
    return result


def _run_id(output: str) -> str:
    return next(line.split()[-1] for line in output.splitlines() if "UUID" in line)


def _wait(env: dict[str, str], flow_run_id: str, timeout: float = 1500) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = json.loads(_prefect(["flow-run", "inspect", flow_run_id, "--output", "json"], env).stdout)
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        assert time.monotonic() < deadline, f"flow run {flow_run_id} still {run['state']['type']}"
        time.sleep(3)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):
    """The README's service block, run against PostgreSQL; every process it started is stopped at the end."""
    database = os.environ.get(DB_VAR)
    if not database:
        pytest.skip(f"{DB_VAR} is not set: .ci/run installs Debian's postgresql, starts a cluster on loopback "
                    "and exports it; run the test through .ci/run or export it yourself")
    from synth import generate_dataset

    tmp = tmp_path_factory.mktemp("service")
    data, outputs = tmp / "data12", tmp / "outputs"
    generate_dataset(data, patients=12, seed=7, rows=64, columns=48, frames=(6, 9), positive_fraction=0.4)
    api_port, files_port = _free_port(), _free_port()
    subs = {
        "/data/bcs-dbt": str(data), "/data/tomoflow": str(outputs), "4200": str(api_port), "8080": str(files_port),
        "source .venv/bin/activate": f"source {BIN / 'activate'}",
        "postgresql+asyncpg://prefect:CHANGE-ME@127.0.0.1:5432/prefect": database,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TOMOFLOW_"))}
    env.update({
        "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "3", "PREFECT_UI_ENABLED": "false",
        "TORCH_HOME": str(tmp / "torch"),  # no ImageNet weights: nightly's default config must say so
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    })
    script = tmp / "service.sh"
    script.write_text(_script(readme_service_block(), subs))
    log = open(tmp / "service.log", "w")
    proc = subprocess.Popen(["bash", str(script)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        assert proc.wait(timeout=900) == 0, (tmp / "service.log").read_text()[-4000:]
        env.update({"PREFECT_API_URL": f"http://127.0.0.1:{api_port}/api",
                    "PREFECT_UI_URL": f"http://127.0.0.1:{api_port}"})
        yield {"env": env, "data": data, "outputs": outputs, "files_port": files_port, "log": tmp / "service.log"}
    finally:
        # The block's background jobs (server, workers, file server) share the script's session.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(10)
        log.close()


def _state(run: dict) -> tuple[str, str]:
    return run["state"]["type"], run["state"].get("message") or ""


def test_readme_service_steps_on_postgresql(service: dict) -> None:
    env, outputs = service["env"], service["outputs"]
    before = set(p.name for p in REPO.iterdir())

    # The deployments read back from the server: schedules and parameters as in prefect.yaml.
    nightly = json.loads(_prefect(["deployment", "inspect", "tomoflow-pipeline/nightly", "--output", "json"], env).stdout)
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert nightly["parameters"]["config"]["train_deployment"] == "train-classifier/gpu-train"
    assert nightly["work_pool_name"] == "cpu-pool"
    gpu = json.loads(_prefect(["deployment", "inspect", "train-classifier/gpu-train", "--output", "json"], env).stdout)
    assert gpu["work_pool_name"] == "gpu-pool" and gpu["job_variables"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    listed = _prefect(["deployment", "ls"], env).stdout
    for preset in ("m1-baseline", "m2-baseline", "m2-inception-scratch"):
        assert f"tomoflow-pipeline/{preset}" in listed

    # A mistyped preset is refused before any run exists, with the known ones.
    bad = _prefect(["deployment", "run", "tomoflow-pipeline/adhoc-retrain", "--param", "preset=demo2"], env,
                   check=False)
    assert bad.returncode != 0
    assert "demo2" in bad.stdout + bad.stderr and "m1-baseline" in bad.stdout + bad.stderr

    # The README's last line: the ad-hoc retrain, roots from the environment, on 12 patients.
    adhoc = _wait(env, _run_id(_prefect(["deployment", "run", "tomoflow-pipeline/adhoc-retrain", "--param",
                                         "preset=demo", "--param", 'config={"train": {"epochs": 2}}'], env).stdout))
    # nightly with its defaults, as its schedule would start it.
    night = _wait(env, _run_id(_prefect(["deployment", "run", "tomoflow-pipeline/nightly"], env).stdout))

    ui = env["PREFECT_UI_URL"]
    for run in (adhoc, night):
        state, message = _state(run)
        assert state in ("COMPLETED", "FAILED"), f"{run['name']}: {state} {message}\n" + \
            service["log"].read_text()[-4000:]
        assert "\n" not in message and "Process exited" not in message
        assert "TOMOFLOW_" not in message, message  # the roots were configured by the README's steps
        if "training deployment" in message:
            assert f"{ui}/runs/flow-run/" in message, message
    # nightly's default configuration wants ImageNet weights, which this machine's cache lacks: the
    # GPU run says so, and the pipeline's message carries that reason and the link to the child run.
    state, message = _state(night)
    assert state == "FAILED" and "train-classifier/gpu-train" in message and "weights" in message.lower(), message

    # The run-time config was merged into the deployment's (the GPU handoff stayed) and won over the preset.
    run_dirs = {p.name: p for p in (outputs / "runs").iterdir()}
    adhoc_dir = next(p for n, p in run_dirs.items() if n.endswith(adhoc["id"][:8]))
    stored = json.loads((adhoc_dir / "config.json").read_text())["config"]
    assert stored["train"]["epochs"] == 2 and stored["train_deployment"] == "train-classifier/gpu-train"
    if _state(adhoc)[0] == "COMPLETED":
        report = adhoc_dir / "evaluation" / "report.html"
        import urllib.request

        url = f"http://127.0.0.1:{service['files_port']}/runs/{adhoc_dir.name}/evaluation/report.html"
        with urllib.request.urlopen(url.replace(" ", "%20"), timeout=10) as r:
            assert r.read() == report.read_bytes()
        artifacts = _prefect(["artifact", "ls"], env).stdout
        for key in ("pipeline-summary", "learning-curves", "pipeline-outputs", "evaluation-metrics"):
            assert key in artifacts, key

    # No retries of a deterministic failure: every task ran once.
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            task_runs = client.read_task_runs()
    assert task_runs and all(t.run_count <= 1 for t in task_runs), [(t.name, t.run_count) for t in task_runs]
    # A worker started without TOMOFLOW_HOME fails the run (not Crashed), naming the variable.
    _prefect(["work-pool", "create", "no-home-pool", "--type", "process", "--overwrite"], env)
    _prefect(["--no-prompt", "deploy", "--name", "adhoc-retrain", "--pool", "no-home-pool"], env)
    no_home = _run_id(_prefect(["deployment", "run", "tomoflow-pipeline/adhoc-retrain", "--param", "preset=demo"],
                               env).stdout)
    worker_env = {k: v for k, v in env.items() if k != "TOMOFLOW_HOME"}
    subprocess.run([str(BIN / "prefect"), "worker", "start", "--pool", "no-home-pool", "--run-once"],
                   cwd=service["data"], env=worker_env, capture_output=True, timeout=600)
    state, message = _state(_wait(env, no_home, timeout=120))
    assert state == "FAILED" and "TOMOFLOW_HOME is not set" in message and "export TOMOFLOW_HOME=" in message, \
        (state, message)

    # Nothing was written into the code checkout.
    assert set(p.name for p in REPO.iterdir()) - before == set()
    assert not (REPO / "output").exists() and not (REPO / "data").exists()
