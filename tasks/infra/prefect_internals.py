"""The only place tomoflow reads or changes Prefect's private internals, and why it must.

Three needs have no public API in Prefect 3.9:

* **Which temporary ("ephemeral") Prefect server this process runs.** With no
  ``PREFECT_API_URL`` configured, a ``tomoflow`` command runs its flows against a temporary
  server that Prefect starts in a subprocess (``prefect.server.api.server.SubprocessASGIServer``).
  Extraction workers must reach that same server (or each would start its own and its task
  runs would not show in the run's view), and the kill handling must not terminate it
  before the run records its final state. Prefect keeps these servers in the class-level
  registry ``SubprocessASGIServer._instances`` and exposes neither the registry nor the
  running server's URL or process: :func:`temporary_servers` reads it.
* **Starting that server in a session of its own.** Ctrl-C at a terminal signals the whole
  foreground process group; the server would stop at once and the interrupted run could
  not record that it was cancelled. Prefect has no option for the server's process group,
  so :func:`isolate_temporary_server` replaces the server module's reference to
  ``subprocess`` by one whose ``Popen`` adds ``start_new_session=True``.
* **The error a failed concurrency-slot acquisition raises.** The public
  ``prefect.concurrency.sync.concurrency`` raises ``ConcurrencySlotAcquisitionError`` when the
  server answers with an error while a run waits for the output root's slot
  (:mod:`tasks.infra.output_slot` waits again on a 5xx), but Prefect defines and exports that
  class only in the private ``prefect.concurrency._asyncio``: :func:`slot_acquisition_error`.

:func:`missing_internals` lists what of this the installed Prefect no longer has;
``tests/tasks/infra/test_prefect_internals.py`` fails on a Prefect upgrade that removes any of it.
"""

from __future__ import annotations

import inspect
import subprocess
from typing import Any

#: What :func:`temporary_servers` reads on each server (instance attributes set in ``__init__``).
SERVER_ATTRIBUTES = ("running", "server_process")


def temporary_servers() -> list[Any]:
    """Prefect's temporary API servers of this process (running or not); [] without the server module."""
    try:
        from prefect.server.api.server import SubprocessASGIServer
    except ImportError:
        return []
    return list(getattr(SubprocessASGIServer, "_instances", {}).values())


def running_server_url() -> str | None:
    """The API URL of this process's running temporary server, or None when none runs."""
    for server in temporary_servers():
        if getattr(server, "running", False):
            return str(server.api_url)
    return None


def running_server_pids() -> set[int]:
    """Process ids of this process's temporary servers that are still alive."""
    pids = set()
    for server in temporary_servers():
        process = getattr(server, "server_process", None)
        if process is not None and process.poll() is None:
            pids.add(process.pid)
    return pids


class _NewSessionSubprocess:
    """``subprocess`` as seen by Prefect's server module, with ``Popen`` in a new session."""

    def __getattr__(self, name: str) -> object:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:  # noqa: N802 - mirrors subprocess
        kwargs.setdefault("start_new_session", True)
        command = kwargs.get("args", args[0] if args else ())
        uvicorn = "uvicorn" in [str(a) for a in command] if isinstance(command, (list, tuple)) else False
        if uvicorn and "stderr" not in kwargs:
            # Its stop prints a CancelledError traceback after a Completed run: drop that alone.
            kwargs["stderr"] = subprocess.PIPE
        process = subprocess.Popen(*args, **kwargs)  # type: ignore[call-overload]
        if uvicorn and process.stderr is not None and kwargs["stderr"] is subprocess.PIPE:
            from tasks.infra.ephemeral_server_stderr import forward_without_cancelled

            forward_without_cancelled(process.stderr)
            process.stderr = None  # Prefect reads it on a failed start; the thread already passes it on
        return process


def isolate_temporary_server() -> None:
    """Make Prefect start its temporary server in a session of its own (see the module's docstring).

    In its own session the server only stops when Prefect stops it at the end of the
    command, or when tomoflow's reaper does after a SIGKILL.
    """
    try:
        from prefect.server.api import server as prefect_server
    except ImportError:
        return
    if not isinstance(getattr(prefect_server, "subprocess", None), _NewSessionSubprocess):
        prefect_server.subprocess = _NewSessionSubprocess()  # type: ignore[assignment]


def slot_acquisition_error() -> type[Exception]:
    """The exception class ``prefect.concurrency.sync.concurrency`` raises when acquiring a slot fails."""
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError

    return ConcurrencySlotAcquisitionError


def missing_internals() -> list[str]:
    """What this module relies on that the installed Prefect does not have (empty when all is there)."""
    try:
        from prefect.server.api import server as prefect_server
    except ImportError as exc:
        return [f"prefect.server.api.server cannot be imported ({exc})"]
    missing = []
    cls = getattr(prefect_server, "SubprocessASGIServer", None)
    if cls is None:
        return ["prefect.server.api.server.SubprocessASGIServer"]
    if not isinstance(cls.__dict__.get("_instances"), dict):
        missing.append("SubprocessASGIServer._instances (a class-level dict)")
    if not isinstance(getattr(cls, "api_url", None), property):
        missing.append("SubprocessASGIServer.api_url (a property)")
    init_source = inspect.getsource(cls.__init__)
    missing += [f"SubprocessASGIServer.{name} (set in __init__)" for name in SERVER_ATTRIBUTES
                if f"self.{name}" not in init_source]
    if getattr(prefect_server, "subprocess", None) is None:
        missing.append("prefect.server.api.server.subprocess (the module reference replaced)")
    if "subprocess.Popen(" not in inspect.getsource(cls):
        missing.append("SubprocessASGIServer starting its server with subprocess.Popen")
    try:
        slot_acquisition_error()
    except ImportError:
        missing.append("prefect.concurrency._asyncio.ConcurrencySlotAcquisitionError")
    return missing
