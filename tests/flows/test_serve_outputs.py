"""`tomoflow serve-outputs` serves reports and curves only, read-only, on loopback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _status(url: str, method: str = "GET") -> int:
    request = urllib.request.Request(url, method=method, data=b"x" if method in ("PUT", "POST") else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_serve_outputs_serves_reports_not_slices(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    (root / "evaluations" / "k1").mkdir(parents=True)
    (root / "evaluations" / "k1" / "report.html").write_text("<html>report</html>")
    (root / "runs" / "r1").mkdir(parents=True)
    (root / "runs" / "r1" / "learning_curves.png").write_bytes(b"\x89PNG curves")
    (root / "runs" / "r1" / "best.pt").write_bytes(b"weights")
    slices = root / "prepared" / "k2" / "slices" / "DBT-P00001" / "DBT-S00001" / "lcc"
    slices.mkdir(parents=True)
    (slices / "0003.png").write_bytes(b"\x89PNG patient")
    (root / "prepared" / "k2" / "report.html").write_text("not a report")
    (root / "prepared" / "k2" / "manifest.parquet").write_bytes(b"PAR1")
    (tmp_path / "secret.html").write_text("outside")
    (root / "evaluations" / "report.html").symlink_to(tmp_path / "secret.html")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve-outputs", "--root", str(root), "--port", "0"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://(127\.0\.0\.1):(\d+)/", line)
        assert match, line + proc.stderr.read() if proc.poll() is not None else line
        base = f"http://127.0.0.1:{match.group(2)}"
        assert _status(f"{base}/evaluations/k1/report.html") == 200
        with urllib.request.urlopen(f"{base}/evaluations/k1/report.html", timeout=10) as response:
            assert response.read() == b"<html>report</html>"
        assert _status(f"{base}/runs/r1/learning_curves.png") == 200
        for path in ("/", "/prepared/", "/prepared/k2/slices/DBT-P00001/DBT-S00001/lcc/0003.png",
                     "/prepared/k2/report.html", "/prepared/k2/manifest.parquet", "/runs/r1/best.pt",
                     "/evaluations/report.html", "/evaluations/k1/../../prepared/k2/manifest.parquet",
                     "/%2e%2e/secret.html"):
            assert _status(base + path) == 404, path
        assert _status(f"{base}/evaluations/k1/report.html", method="PUT") in (405, 501)
        assert _status(f"{base}/evaluations/k1/report.html", method="POST") in (405, 501)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_service_block_gives_the_database_url_to_the_server_only() -> None:
    """The database URL lives in the server's env file alone, never exported to workers."""
    from tests.e2e.test_service import service_block

    lines = service_block()
    assert not any("PREFECT_API_DATABASE_CONNECTION_URL" in line and line.lstrip().startswith("export")
                   for line in lines)
    env_dir = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
    with_url = sorted(f.name for f in env_dir.glob("*.env") if "PREFECT_API_DATABASE_CONNECTION_URL" in f.read_text())
    assert with_url == ["server.env"]
    assert any(line.startswith("deploy/tomoflow-service") and " server &" in line for line in lines)
    # The outputs role is tomoflow serve-outputs (reports and curves only), not http.server.
    assert not any("http.server" in line for line in lines)
    assert any(line.startswith("deploy/tomoflow-service") and " outputs &" in line for line in lines)
    launcher = (env_dir.parent / "tomoflow-service").read_text()
    assert "serve-outputs" in launcher and "http.server" not in launcher


def test_port_in_use_gives_one_line_and_a_client_hanging_up_leaves_no_traceback(tmp_path: Path) -> None:
    """A port already in use stops with one line; a client hanging up mid-answer leaves no traceback."""
    import socket
    import struct
    import time

    root = tmp_path / "outputs"
    (root / "runs" / "r1").mkdir(parents=True)
    (root / "runs" / "r1" / "report.html").write_bytes(b"<html>" + b"x" * (32 << 20))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve-outputs", "--root", str(root), "--port", "0"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", proc.stdout.readline())
        assert match
        port = match.group(1)
        second = subprocess.run([sys.executable, "-m", "flows.cli", "serve-outputs", "--root", str(root),
                                 "--port", port], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"port {port}" in lines[0] and "--port 0" in lines[0], second.stderr
        for _ in range(3):  # clients that hang up mid-answer (reset, not a clean close)
            client = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
            client.sendall(b"GET /runs/r1/report.html HTTP/1.1\r\nHost: x\r\n\r\n")
            client.recv(1024)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
        time.sleep(1)
        assert _status(f"http://127.0.0.1:{port}/runs/r1/report.html", method="HEAD") == 200  # still serving
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr and "ConnectionReset" not in stderr, stderr
