"""A command killed outright leaves no flow run Running: its watcher (the reaper) marks
them Crashed; a rerun says which earlier run it supersedes."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tasks.core.files import killed_holder, output_lock
from tasks.infra.lifecycle import mark_crashed
from tests.flows.cli_env import REPO


class _FakeApi(http.server.BaseHTTPRequestHandler):
    """``GET /flow_runs/ID`` answers the state in ``states``; ``POST .../set_state`` is recorded."""

    states: dict[str, str] = {}
    posted: list[tuple[str, dict]] = []

    def do_GET(self) -> None:  # noqa: N802
        run_id = self.path.rstrip("/").split("/")[-1]
        body = json.dumps({"id": run_id, "state": {"type": self.states.get(run_id, "COMPLETED")}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.posted.append((self.path, payload))
        self.send_response(201)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


def _api() -> tuple[http.server.ThreadingHTTPServer, str]:
    _FakeApi.states, _FakeApi.posted = {"running-1": "RUNNING", "done-2": "COMPLETED"}, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/api"


def test_mark_crashed_sets_only_unfinished_runs() -> None:
    server, api = _api()
    try:
        marked = mark_crashed([("running-1", api), ("done-2", api)], pid=4242)
    finally:
        server.shutdown()
    assert marked == ["running-1"]
    (path, body), = _FakeApi.posted
    assert path == "/api/flow_runs/running-1/set_state" and body["force"] is True
    assert body["state"]["type"] == "CRASHED" and "pid 4242" in body["state"]["message"]
    assert "killed" in body["state"]["message"]
    assert mark_crashed([("running-1", "http://127.0.0.1:9/api")], pid=1, timeout=2) == []  # server gone


CHILD = """
import os, sys, json, time
from tasks.infra import lifecycle
lifecycle.start_reaper()
for run_id in ("running-1", "done-2"):  # what watch_flow_run() writes from inside each flow run
    lifecycle._REAPER.stdin.write((json.dumps({"id": run_id, "api": sys.argv[1]}) + "\\n").encode())
lifecycle._REAPER.stdin.flush()
print(lifecycle._REAPER.pid, flush=True)
time.sleep(120)
"""


def test_the_reaper_marks_a_killed_commands_runs_crashed() -> None:
    server, api = _api()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", CHILD, api], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        reaper = int(child.stdout.readline())
        time.sleep(1)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and os.path.exists(f"/proc/{reaper}") and not _FakeApi.posted:
            time.sleep(0.2)
    finally:
        server.shutdown()
    assert [p for p, _ in _FakeApi.posted] == ["/api/flow_runs/running-1/set_state"]
    assert f"pid {child.pid}" in _FakeApi.posted[0][1]["state"]["message"]


HOLD = ("import sys, time\nfrom tasks.core.files import output_lock\n"
        "with output_lock(sys.argv[1], what='flow run train vgg16 sgd'):\n    print('held', flush=True)\n"
        "    time.sleep(float(sys.argv[2]))\n")


def test_a_lock_left_by_a_killed_run_is_named_by_the_next_holder(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    killed.mkdir()
    clean.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(killed), "60"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    subprocess.run([sys.executable, "-c", HOLD, str(clean), "0"], cwd=REPO, env=env, check=True, timeout=60)
    with output_lock(killed, what="x"):
        found = killed_holder(killed)
    assert found is not None and "train vgg16 sgd" in found and f"pid {holder.pid}" in found
    with output_lock(clean, what="x"):
        assert killed_holder(clean) is None
