"""End to end, the way the operators run it: docs/service.md's "Start it by hand" on PostgreSQL.

Runs alone with ``pytest -m e2e``. The test reads the service block of docs/service.md and runs it,
line by line in one bash, with its own paths and ports substituted (in the block and in the
role env files it copies from ``deploy/systemd/``), the virtualenv pointed at the interpreter
running the tests. The Prefect server's database is the PostgreSQL that ``.ci/run`` starts and
exports as ``TOMOFLOW_TEST_DATABASE_URL`` (``sqlite`` runs it on Prefect's SQLite); without
it the test is skipped, saying so. One server serves every scenario: ``nightly`` with its
defaults fails in its first step (no weights here) naming the deployment parameter, and the
alert reaches a webhook receiver on loopback; two ad-hoc runs on one output root queue; a
worker stops on one SIGTERM; the server log never says ``database is locked``.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
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


#: Where the service block lives: the first bash block under this heading of this file.
SERVICE_DOC, SERVICE_HEADING = REPO / "docs" / "service.md", "## Start it by hand"


def service_block() -> list[str]:
    """The lines of the documented service block (the first bash block of its section)."""
    text = SERVICE_DOC.read_text()
    section = text[text.index(SERVICE_HEADING):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"{SERVICE_DOC.name}: no bash block under {SERVICE_HEADING!r}"
    return [line for line in block.group(1).splitlines() if line.strip()]


def _script(lines: list[str], subs: dict[str, str]) -> str:
    out = ["set -e"]
    for line in lines:
        if line.startswith("make install") and not (REPO / ".venv" / ".installed").is_file():
            out.append(":  # make install: the tests already run in an installed interpreter")
            continue
        if line.startswith("prefect deployment run"):
            continue  # run by the test itself, to read the run's id and wait for it
        if line.startswith("mkdir -p /etc/tomoflow"):
            out.append(":  # the role env files: written by the test with its own paths (_env_files)")
            continue
        for old, new in subs.items():
            line = line.replace(old, new)
        out.append(line)
    return "\n".join(out) + "\n"


def _env_files(etc: Path, subs: dict[str, str], database: str | None) -> None:
    """The role env files of deploy/systemd/ with the test's paths, ports and database (``cp -n`` keeps them)."""
    etc.mkdir(parents=True)
    for source in sorted((REPO / "deploy" / "systemd").glob("*.env")):
        lines = []
        for line in source.read_text().splitlines():
            if line.startswith("PREFECT_API_DATABASE_CONNECTION_URL=") and database is None:
                continue  # SQLite: the line left out, as docs/service.md says
            for old, new in subs.items():
                line = line.replace(old, new)
            lines.append(line)
        lines.append(f"TOMOFLOW_VENV={sys.prefix}")  # the interpreter running the tests
        (etc / source.name).write_text("\n".join(lines) + "\n")


class _Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook endpoint on loopback that keeps what was POSTed."""

    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            self.received.append(json.loads(body or b"{}"))
        except ValueError:
            self.received.append({"raw": body.decode(errors="replace")})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


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
    """The documented service block, run against PostgreSQL; every process it started is stopped at the end."""
    database = os.environ.get(DB_VAR)
    if not database:
        pytest.skip(f"{DB_VAR} is not set: .ci/run installs Debian's postgresql, starts a cluster on loopback "
                    "and exports it; run the test through .ci/run or export it yourself (sqlite: Prefect's SQLite)")
    database = None if database == "sqlite" else database
    from synth.generate import generate_dataset

    tmp = tmp_path_factory.mktemp("service")
    data, outputs = tmp / "data12", tmp / "outputs"
    generate_dataset(data, patients=12, seed=7, rows=64, columns=48, frames=(6, 9), positive_fraction=0.4)
    api_port, files_port = _free_port(), _free_port()
    _Receiver.received = []
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)  # loopback only
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    subs = {
        "/data/bcs-dbt": str(data), "/data/tomoflow": str(outputs), "4200": str(api_port), "8080": str(files_port),
        "/opt/tomoflow": str(REPO), "/var/lib/tomoflow": str(tmp / "var"), "/etc/tomoflow": str(tmp / "etc"),
        "https://hooks.example.org/tomoflow": hook,
        "source .venv/bin/activate": f"source {BIN / 'activate'}",
        "postgresql+asyncpg://prefect:CHANGE-ME@127.0.0.1:5432/prefect": database or "",
    }
    _env_files(tmp / "etc", subs, database)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TOMOFLOW_"))}
    env.update({
        "PREFECT_HOME": str(tmp / "var" / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "3", "PREFECT_UI_ENABLED": "false",
        "TORCH_HOME": str(tmp / "var" / "torch"),  # no ImageNet weights: nightly's default config must say so
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    })
    script = tmp / "service.sh"
    script.write_text(_script(service_block(), subs))
    log = open(tmp / "service.log", "w")
    proc = subprocess.Popen(["bash", str(script)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        assert proc.wait(timeout=900) == 0, (tmp / "service.log").read_text()[-4000:]
        env.update({"PREFECT_API_URL": f"http://127.0.0.1:{api_port}/api",
                    "PREFECT_UI_URL": f"http://127.0.0.1:{api_port}"})
        yield {"env": env, "data": data, "outputs": outputs, "files_port": files_port, "log": tmp / "service.log",
               "session": proc.pid, "received": _Receiver.received}
    finally:
        # The block's background jobs (server, workers, file server) share the script's session.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(10)
        receiver.shutdown()
        log.close()


def _state(run: dict) -> tuple[str, str]:
    return run["state"]["type"], run["state"].get("message") or ""


def _logs(env: dict[str, str], flow_run_id: str) -> str:
    return _prefect(["flow-run", "logs", flow_run_id], env).stdout


def _alive(pid: int) -> bool:
    """The process runs (a zombie, left for a reaper that may not come in a container, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _service_workers(session: int) -> dict[str, int]:
    """Pool -> pid of the documented workers (``tasks.infra.service_worker``) in the block's session."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if os.getsid(int(entry)) != session:
                continue
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in cmd]
        if "tasks.infra.service_worker" in args and "--pool" in args:
            found[args[args.index("--pool") + 1]] = int(entry)
    return found


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
    # The alerts of deploy/automations.yaml, created by the block's 'tomoflow alerts' line.
    automations = _prefect(["automation", "ls"], env).stdout
    assert "tomoflow-run-failed" in automations and "tomoflow-run-stuck-running" in automations

    # A mistyped preset is refused before any run exists, with the known ones.
    bad = _prefect(["deployment", "run", "tomoflow-pipeline/adhoc-retrain", "--param", "preset=demo2"], env,
                   check=False)
    assert bad.returncode != 0
    assert "demo2" in bad.stdout + bad.stderr and "m1-baseline" in bad.stdout + bad.stderr

    # nightly with its defaults, as its schedule would start it: no ImageNet weights on this machine, so
    # it fails in its first step, in whole sentences naming the deployment parameter, before any work.
    night = _wait(env, _run_id(_prefect(["deployment", "run", "tomoflow-pipeline/nightly"], env).stdout), timeout=300)
    state, message = _state(night)
    assert state == "FAILED" and "Preflight found" in message, message
    assert """--param config='{"model":{"weights":"none"}}'""" in message, message
    assert "--weights" not in message and "…" not in message and message.rstrip().endswith("."), message
    assert not (outputs / "prepared").exists()  # nothing was prepared

    # The failure reaches the operator: the automation's notification arrives at the local webhook.
    deadline = time.monotonic() + 180
    while not any(night["name"] in json.dumps(m) for m in service["received"]):
        assert time.monotonic() < deadline, f"no notification for {night['name']}: {service['received']}"
        time.sleep(2)
    note = next(m for m in service["received"] if night["name"] in json.dumps(m))
    assert "Failed" in note["subject"] and "Preflight found" in note["body"], note

    # Two ad-hoc runs on one output root: the second waits its turn (and says so), then both complete.
    params = ["--param", "preset=demo", "--param", 'config={"train": {"epochs": 2}}']
    first = _run_id(_prefect(["deployment", "run", "tomoflow-pipeline/adhoc-retrain", *params], env).stdout)
    second = _run_id(_prefect(["deployment", "run", "tomoflow-pipeline/adhoc-retrain", *params], env).stdout)
    adhoc, again = _wait(env, first), _wait(env, second)
    for run in (adhoc, again):
        state, message = _state(run)
        assert state == "COMPLETED", f"{run['name']}: {state} {message}\n" + service["log"].read_text()[-4000:]
    waited = [run_id for run_id in (first, second) if "waits its turn" in _logs(env, run_id)]
    assert len(waited) == 1, waited

    # The run-time config was merged into the deployment's (the GPU handoff stayed) and won over the preset.
    run_dirs = {p.name: p for p in (outputs / "runs").iterdir()}
    adhoc_dir = next(p for n, p in run_dirs.items() if n.endswith(adhoc["id"][:8]))
    assert adhoc_dir.name.startswith("pipeline-demo-vgg16_bn-64px")  # what ran (folder-safe run name): scratch fall-back, 64 px
    stored = json.loads((adhoc_dir / "config.json").read_text())["config"]
    assert stored["train"]["epochs"] == 2 and stored["train_deployment"] == "train-classifier/gpu-train"
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

    # A worker stops on one SIGTERM, in bounded time (what 'systemctl stop tomoflow-worker@cpu-pool' sends).
    workers = _service_workers(service["session"])
    assert set(workers) >= {"cpu-pool", "gpu-pool"}, workers
    os.kill(workers["cpu-pool"], signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _alive(workers["cpu-pool"]):
        assert time.monotonic() < deadline, "the cpu-pool worker still runs 30 s after one SIGTERM"
        time.sleep(0.5)
    assert "worker of cpu-pool: stopped" in service["log"].read_text()

    # Two workers and a server on one database: never "database is locked" (PostgreSQL; SQLite must not show it either).
    assert "database is locked" not in service["log"].read_text()

    # Nothing was written into the code checkout.
    assert set(p.name for p in REPO.iterdir()) - before == set()
    assert not (REPO / "output").exists() and not (REPO / "data").exists()
