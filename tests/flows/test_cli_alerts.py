"""``tomoflow alerts`` (flows/cli_alerts.py) through the command line: its checks before anything is
installed, its options' limits and its one-line errors."""

from __future__ import annotations

import pytest


def test_cli_without_a_server_says_what_to_set(tmp_path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(repo)})
    result = subprocess.run([sys.executable, "-m", "flows.cli", "alerts", "--webhook", "http://127.0.0.1:9/x"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "tomoflow alerts: error: PREFECT_API_URL is not set: alerts live on the service's Prefect server; "
        "export PREFECT_API_URL=http://HOST:4200/api first"]


def _alerts(tmp_path, *args: str, api_url: str | None = "http://127.0.0.1:9/api"):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(repo)})
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run([sys.executable, "-m", "flows.cli", "alerts", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_webhook_without_a_host_stops_the_command_in_one_line(tmp_path) -> None:
    """exit 2, one line, nothing created."""
    result = _alerts(tmp_path, "--webhook", "http://[::1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tomoflow alerts: error: --webhook 'http://[::1'"), lines


def test_test_message_that_does_not_arrive_installs_nothing(tmp_path) -> None:
    """by default one test message is sent first; a closed port stops with one line."""
    result = _alerts(tmp_path, "--webhook", "http://127.0.0.1:9/hook")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "test message to http://127.0.0.1:9/hook did not arrive" in lines[0]
    assert "nothing was installed" in lines[0] and "--no-test" in lines[0]


def test_test_message_arrives_and_an_unreachable_server_is_named(tmp_path) -> None:
    """the receiver gets the test message; the unreachable PREFECT_API_URL is named."""
    import http.server
    import json
    import threading

    received: list[dict] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        result = _alerts(tmp_path, "--webhook", url, api_url="http://127.0.0.1:9/api")
    finally:
        server.shutdown()
    assert result.returncode == 2, result.stderr
    assert "test message: arrived (HTTP 200)" in result.stdout
    assert received and received[0]["subject"] == "tomoflow alerts: test"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PREFECT_API_URL=http://127.0.0.1:9/api does not answer" in lines[0]


@pytest.mark.parametrize("args, option", [(("--pending-minutes", "-5"), "--pending-minutes"),
                                          (("--running-hours", "0"), "--running-hours"),
                                          (("--pending-minutes", "nan"), "--pending-minutes")])
def test_limits_out_of_range_name_the_option_and_its_range(capsys, args, option: str) -> None:
    """one line naming the option and its range (the parser, in process)."""
    from flows.cli import build_parser

    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["alerts", "--webhook", "http://127.0.0.1:9/x", *args])
    assert caught.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert option in last and " from " in last and " to " in last, last


def test_negative_pending_minutes_through_the_cli(tmp_path) -> None:
    result = _alerts(tmp_path, "--webhook", "http://127.0.0.1:9/x", "--pending-minutes", "-5")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--pending-minutes: '-5': expected minutes from 1 to 1440" in result.stderr.strip().splitlines()[-1]
