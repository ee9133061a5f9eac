"""The Prefect internals tomoflow relies on (tasks/infra/prefect_internals.py) are in the installed Prefect."""

from __future__ import annotations

import subprocess

import pytest

from tasks.infra import prefect_internals


def test_installed_prefect_has_every_internal_tomoflow_reads() -> None:
    # Fails on a Prefect upgrade that renames or drops the server registry, its attributes
    # or the module's subprocess reference: read tasks/infra/prefect_internals.py's docstring then.
    assert prefect_internals.missing_internals() == []


def test_a_prefect_without_the_registry_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.server.api import server as prefect_server

    class WithoutRegistry:
        def __init__(self) -> None:
            self.running = False

    monkeypatch.setattr(prefect_server, "SubprocessASGIServer", WithoutRegistry)
    missing = prefect_internals.missing_internals()
    assert "SubprocessASGIServer._instances (a class-level dict)" in missing
    assert "SubprocessASGIServer.server_process (set in __init__)" in missing
    assert "SubprocessASGIServer.running (set in __init__)" not in missing


def test_registry_is_read_for_url_and_pids(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.server.api.server import SubprocessASGIServer

    class Alive:
        pid = 4242

        def poll(self) -> None:
            return None

    class FakeServer:
        running = True
        api_url = "http://127.0.0.1:1234/api"
        server_process = Alive()

    monkeypatch.setattr(SubprocessASGIServer, "_instances", {1234: FakeServer()})
    assert prefect_internals.running_server_url() == "http://127.0.0.1:1234/api"
    assert prefect_internals.running_server_pids() == {4242}
    monkeypatch.setattr(SubprocessASGIServer, "_instances", {})
    assert prefect_internals.running_server_url() is None


def test_isolated_server_popen_starts_a_new_session(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.server.api import server as prefect_server

    monkeypatch.setattr(prefect_server, "subprocess", subprocess)
    prefect_internals.isolate_temporary_server()
    assert prefect_server.subprocess is not subprocess
    seen: dict[str, object] = {}
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **kw: seen.update(kw) or "proc")
    assert prefect_server.subprocess.Popen(["true"]) == "proc"
    assert seen == {"start_new_session": True}
    assert prefect_server.subprocess.TimeoutExpired is subprocess.TimeoutExpired

