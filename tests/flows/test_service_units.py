"""The service's unit files and launcher: valid units, one env file per role, command lines that start,
and a worker that stops on the first SIGTERM."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
ROLES = {"tomoflow-server.service": "server", "tomoflow-worker@.service": "worker", "tomoflow-outputs.service": "outputs"}


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # systemd's keys are case-sensitive
    parser.read(UNITS / name)
    return parser


def _env_file(role: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (UNITS / f"{role}.env").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return dict(pairs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_units_name_their_role_env_file_and_the_launcher() -> None:
    assert {p.name for p in UNITS.glob("*.service")} == set(ROLES)
    for name, role in ROLES.items():
        service = _unit(name)["Service"]
        assert service["EnvironmentFile"] == f"/etc/tomoflow/{role}.env"
        assert f'deploy/tomoflow-service" {role}' in service["ExecStart"]
        assert service["Restart"] == "on-failure" and int(service["TimeoutStopSec"]) > 0
        assert (UNITS / f"{role}.env").is_file()
    # Only the server reads the database URL; workers reach it through PREFECT_API_URL.
    assert "PREFECT_API_DATABASE_CONNECTION_URL" in _env_file("server")
    for role in ("worker", "outputs"):
        assert not any("DATABASE" in key for key in _env_file(role)), role
    assert _env_file("worker")["PREFECT_API_URL"].endswith("/api")
    assert "%i" in _unit("tomoflow-worker@.service")["Service"]["ExecStart"]


# What a unit cannot decide: the machine's user and the files under /etc/tomoflow it installs.
MACHINE = re.compile(r"/etc/tomoflow/|\b[Uu]ser\b.*\b(not found|[Nn]o such|unknown|does ?n[o']t exist)")


def _verify(unit: Path) -> tuple[int, list[str]]:
    """``systemd-analyze verify``'s exit status and its lines about ``unit`` that are the unit's own fault:
    unknown keys or sections, values that fail to parse ("ignoring", exit 0 all the same), a missing or
    unrunnable ExecStart. Lines about other units, and about what only the machine provides, are left out."""
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return result.returncode, [line for line in lines if unit.name in line and not MACHINE.search(line)]


def _copy_unit(name: str, folder: Path, text: str | None = None) -> Path:
    target = folder / name.replace("@.", "@cpu-pool.")  # a template is verified as one of its instances
    target.write_text((UNITS / name).read_text() if text is None else text)
    return target


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    for name in ROLES:
        code, problems = _verify(_copy_unit(name, tmp_path))
        assert problems == [], problems
        assert code == 0, f"{name}: systemd-analyze verify exited {code} on a machine-only issue"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize(("edit", "said"), [
    (("Type=simple", "Type=bogus"), "Failed to parse service type"),            # exit 0: only the lines say it
    (("Restart=on-failure", "Restart=sometimes"), "restart specifier"),
    (("ExecStart=", "ExecStrat="), "Unknown key 'ExecStrat'"),
    (("ExecStart=/bin/sh", "ExecStart=bin/sh"), "bin/sh"),
], ids=["bad-type", "bad-restart", "unknown-key", "relative-exec-start"])
def test_verify_check_says_no_to_a_broken_unit(edit: tuple[str, str], said: str, tmp_path: Path) -> None:
    """The control: the same check on a copy of the server unit with one line broken finds it."""
    text = (UNITS / "tomoflow-server.service").read_text()
    assert edit[0] in text
    _, problems = _verify(_copy_unit("tomoflow-server.service", tmp_path, text.replace(edit[0], edit[1], 1)))
    assert any(said in line for line in problems), problems


def _launch(role_args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """The unit's ExecStart as systemd runs it: /bin/sh -c with the role's environment."""
    unit = "tomoflow-worker@.service" if role_args[0] == "worker" else f"tomoflow-{role_args[0]}.service"
    command = _unit(unit)["Service"]["ExecStart"].split(" ", 2)[2].strip("'").replace("%i", role_args[-1])
    return subprocess.Popen(["/bin/sh", "-c", command], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen, within: float) -> float:
    """SIGTERM once; seconds until the process ended (fails past ``within``)."""
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"still running {within} s after one SIGTERM")
    return time.monotonic() - start


def test_outputs_command_line_serves_on_loopback(tmp_path: Path) -> None:
    port = _free_port()
    (tmp_path / "out" / "runs").mkdir(parents=True)
    (tmp_path / "out" / "runs" / "report.html").write_text("<p>report</p>")
    (tmp_path / "out" / "prepared").mkdir()
    (tmp_path / "out" / "prepared" / "slice.png").write_bytes(b"patient image")
    env = {**os.environ, **_env_file("outputs"), "TOMOFLOW_HOME": str(REPO), "TOMOFLOW_VENV": sys.prefix,
           "TOMOFLOW_OUTPUT_ROOT": str(tmp_path / "out"), "TOMOFLOW_OUTPUTS_PORT": str(port)}
    proc = _launch(["outputs"], env, tmp_path / "outputs.log")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/runs/report.html", timeout=2) as r:
                    assert r.read() == b"<p>report</p>"
                break
            except urllib.error.HTTPError:
                raise
            except OSError:
                assert proc.poll() is None, (tmp_path / "outputs.log").read_text()
                assert time.monotonic() < deadline, "the outputs server did not answer within 30 s"
                time.sleep(0.3)
        # The role runs tomoflow serve-outputs: patient images are not served.
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/prepared/slice.png", timeout=5)
    finally:
        _stop(proc, within=10)


def test_worker_command_line_starts_and_stops_on_one_sigterm(prefect_harness, tmp_path: Path) -> None:
    from prefect.settings import get_current_settings

    api = str(get_current_settings().api.url)
    env = {**os.environ, **_env_file("worker"), "TOMOFLOW_HOME": str(REPO), "TOMOFLOW_VENV": sys.prefix,
           "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    log = tmp_path / "worker.log"
    proc = _launch(["worker", "unit-test-pool"], env, log)
    try:
        deadline = time.monotonic() + 120
        while "started!" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
    finally:
        took = _stop(proc, within=30)
    assert proc.returncode == 0 and "worker of unit-test-pool: stopped" in log.read_text(), log.read_text()
    assert took < 30


def test_launcher_refuses_an_unknown_role(tmp_path: Path) -> None:
    env = {**os.environ, "TOMOFLOW_HOME": str(REPO)}
    result = subprocess.run([str(REPO / "deploy" / "tomoflow-service"), "nope"], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and "usage: tomoflow-service" in result.stderr
    result = subprocess.run([str(REPO / "deploy" / "tomoflow-service"), "--env", str(tmp_path / "missing.env"),
                             "server"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "missing.env" in result.stderr
