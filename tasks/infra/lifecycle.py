"""Nothing outlives its run: worker watchdogs, a reaper process and interrupt handling.

A ``tomoflow`` command starts other processes: the temporary Prefect server (a uvicorn
subprocess Prefect starts), extraction workers (a process pool or a Dask cluster),
multiprocessing's resource tracker, DataLoader workers. If the command dies by SIGKILL,
none of them is told. Three layers make sure they stop:

* :func:`start_reaper` (called by the CLI) starts a tiny watcher process in a session of
  its own. It keeps a list of the command's descendants (read from ``/proc`` every
  0.3 s) and, once the command is gone, terminates every one of them still alive (and
  the same process, checked by its start time, so a reused pid is never hit). Each flow
  run the command starts is told to it (:func:`watch_flow_run`); one still Running or
  Pending when the command is gone (``kill -9``, out of memory) is set Crashed, with a
  message saying the process was killed, before the temporary server is stopped.
* :func:`worker_initializer` (the process pool's initializer) gives each worker a
  parent-pid watchdog thread, so a worker also stops by itself, without the reaper, when
  the process that started it disappears.
* :func:`stop_workers` is what a flow calls when it is interrupted (SIGTERM, Ctrl-C):
  it terminates this process's descendants except the temporary Prefect server, which is
  still needed to record the run as Cancelled.

Linux's ``PR_SET_PDEATHSIG`` is not used for pool workers: it fires when the *thread*
that started the child exits, and Prefect starts pool workers from short-lived resolver
threads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.infra.prefect_internals import running_server_pids

_POLL_S = 0.3
_GRACE_S = 3.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None  # a zombie has already exited
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """``{pid: start time}`` of every live descendant of ``root`` (Linux ``/proc``)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        info = _stat(int(entry))
        if info is not None:
            children.setdefault(info[0], []).append((int(entry), info[1]))
    found: dict[int, int] = {}
    stack = [root]
    while stack:
        for pid, start in children.get(stack.pop(), []):
            if pid not in found:
                found[pid] = start
                stack.append(pid)
    return found


def _terminate(pids: dict[int, int], grace_s: float = _GRACE_S) -> None:
    """SIGTERM the processes still alive with the same start time, then SIGKILL the rest."""
    def alive() -> list[int]:
        return [pid for pid, start in pids.items() if (_stat(pid) or (0, -1))[1] == start]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        targets = alive()
        for pid in targets:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace_s
        while targets and time.monotonic() < deadline:
            time.sleep(0.05)
            targets = alive()
        if not targets:
            return


def _read_watched(stream: Any, watched: list[tuple[str, str]]) -> None:
    """Collect the ``{"id", "api"}`` lines :func:`watch_flow_run` writes to the reaper's stdin."""
    import json

    for line in stream:
        try:
            entry = json.loads(line)
            watched.append((str(entry["id"]), str(entry["api"])))
        except (ValueError, KeyError, TypeError):
            continue


#: The states a killed command leaves its flow runs in.
_UNFINISHED = ("RUNNING", "PENDING", "SCHEDULED")


def mark_crashed(watched: list[tuple[str, str]], pid: int, timeout: float = 5.0) -> list[str]:
    """Set each watched flow run still unfinished to Crashed; return the ids marked.

    After a normal end every run is final (or the temporary server is already gone): nothing
    is changed then.
    """
    import json
    import urllib.request

    marked = []
    for run_id, api in reversed(watched):  # subflows first
        base = f"{api.rstrip('/')}/flow_runs/{run_id}"
        try:
            with urllib.request.urlopen(base, timeout=timeout) as response:
                state = (json.loads(response.read()).get("state") or {}).get("type")
            if state not in _UNFINISHED:
                continue
            body = {"state": {"type": "CRASHED", "name": "Crashed", "message": (
                f"the tomoflow process (pid {pid}) running this flow was killed (SIGKILL, out of memory or a lost "
                "machine) before it could report; marked Crashed by its watcher. Run the same command again to resume")},
                "force": True}
            request = urllib.request.Request(f"{base}/set_state", data=json.dumps(body).encode(), method="POST",
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=timeout):
                marked.append(run_id)
        except (OSError, ValueError):
            continue  # the server is gone or the run is unknown: nothing to mark there
    return marked


def reap(parent: int, parent_start: int) -> None:
    """Watch ``parent``; when it is gone, mark its unfinished flow runs Crashed and terminate every
    descendant it had (the reaper's loop)."""
    watched: list[tuple[str, str]] = []
    threading.Thread(target=_read_watched, args=(sys.stdin, watched), daemon=True).start()
    known: dict[int, int] = {}
    me = os.getpid()
    while True:
        info = _stat(parent)
        if info is None or info[1] != parent_start:
            break
        current = descendants(parent)
        current.pop(me, None)
        # Keep processes that were reparented away (their parent died) while still alive.
        known = {pid: start for pid, start in known.items() if (_stat(pid) or (0, -1))[1] == start}
        known.update(current)
        time.sleep(_POLL_S)
    known.pop(me, None)
    mark_crashed(list(watched), parent)  # while the temporary server (a descendant) still answers
    _terminate(known)


def start_reaper() -> subprocess.Popen[bytes] | None:
    """Start the reaper for this process (Linux only; once per process).

    It runs in a session of its own, so a signal sent to the command's process group
    (Ctrl-C, ``kill -- -PGID``) does not take it down before it has cleaned up, and it
    exits by itself once the command has ended.
    """
    global _REAPER
    if _REAPER is not None or not Path("/proc/self/stat").exists():
        return _REAPER
    info = _stat(os.getpid())
    if info is None:
        return None
    _REAPER = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tasks.infra.lifecycle import reap; reap(int(sys.argv[1]), int(sys.argv[2]))",
         str(os.getpid()), str(info[1])],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(Path(__file__).resolve().parents[2]),
                                                                      os.environ.get("PYTHONPATH", "")] if p)},
    )
    return _REAPER


_REAPER: subprocess.Popen[bytes] | None = None


def watch_flow_run() -> None:
    """Tell this process's reaper about the current flow run (no-op outside a CLI run or a flow run)."""
    import json

    if _REAPER is None or _REAPER.stdin is None:
        return
    try:
        from prefect.runtime import flow_run
        from prefect.settings import get_current_settings

        from tasks.infra.runners import ephemeral_api_url

        run_id = flow_run.id
        api = os.environ.get("PREFECT_API_URL") or get_current_settings().api.url or ephemeral_api_url()
        if not run_id or not api:
            return
        _REAPER.stdin.write((json.dumps({"id": str(run_id), "api": str(api)}) + "\n").encode())
        _REAPER.stdin.flush()
    except (OSError, ValueError, ImportError):
        return  # the reaper is gone: nothing to tell


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            # The process that started this worker is gone: stop now rather than keep
            # writing into an output folder that a rerun may already be using.
            os._exit(70)
        time.sleep(_POLL_S)


def worker_initializer(parent: int) -> None:
    """Process-pool initializer: exit as soon as ``parent`` (the flow's process) is gone.

    It also installs the log redaction (:mod:`tasks.infra.redaction`) in the worker, whose
    records Prefect sends to its API on their own.
    """
    if os.getppid() != parent:
        os._exit(70)
    from tasks.infra.redaction import install

    install()
    threading.Thread(target=_watch_parent, args=(parent,), name="tomoflow-parent-watchdog", daemon=True).start()


def stop_workers() -> int:
    """Terminate this process's descendants except the temporary Prefect server and the reaper.

    Returns:
        How many processes were signalled.
    """
    keep = running_server_pids()
    if _REAPER is not None:
        keep.add(_REAPER.pid)
    pids = descendants(os.getpid())
    # multiprocessing's resource tracker ends by itself once the pool is gone; killing it
    # early only makes multiprocessing relaunch it and warn.
    keep |= {pid for pid in pids if b"resource_tracker" in _cmdline(pid)}
    doomed = {pid: start for pid, start in pids.items() if pid not in keep and not (
        _ancestors_in(pid, keep, pids))}
    _terminate(doomed, grace_s=2.0)
    return len(doomed)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _ancestors_in(pid: int, keep: set[int], family: dict[int, int]) -> bool:
    """Whether ``pid`` descends from one of ``keep`` (the server's own children stay too)."""
    seen = 0
    while pid in family and seen < 64:
        info = _stat(pid)
        if info is None:
            return False
        pid = info[0]
        if pid in keep:
            return True
        seen += 1
    return False


def signal_name(exc: BaseException) -> str:
    """``SIGTERM`` / ``SIGINT`` for an interrupt exception."""
    number = getattr(exc, "signal", None)
    if number is None:
        return "SIGINT" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__
    try:
        return signal.Signals(int(number)).name
    except ValueError:
        return f"signal {number}"


def interrupted(exc: BaseException, out: Path, *, flow: str) -> str:
    """Stop the workers and remove partial files after SIGTERM or Ctrl-C; the Cancelled state's message.

    Args:
        exc: The interrupt (``KeyboardInterrupt`` or Prefect's ``TerminationSignal``).
        out: The folder the flow was writing (its ``.NAME.*.tmp`` files are removed).
        flow: The flow's name, for the log line.
    """
    from tasks.core.files import remove_stale_temporaries

    stopped = stop_workers()
    removed = remove_stale_temporaries(out)
    message = (f"interrupted by {signal_name(exc)}: {stopped} worker processes stopped, "
               f"{removed} partial files removed; run the same command again to resume")
    run_logger(__name__).warning("%s %s", flow, message)
    return message


def run_logger(fallback: str) -> Any:
    """The current Prefect run's logger (its lines reach the run log), or logger ``fallback`` outside a run."""
    import logging

    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run context: the standard logger will do
        return logging.getLogger(fallback)


def cancellable(body: Callable[..., Any], *args: Any, out: Path, flow: str) -> Any:
    """``body(*args)``; after SIGTERM or Ctrl-C, the Cancelled state a flow returns (see :func:`interrupted`).

    A flow returns this state rather than raising, so its run ends Cancelled (not Crashed or
    Failed) with a message saying how to resume.
    """
    from prefect.exceptions import TerminationSignal
    from prefect.states import Cancelled

    watch_flow_run()
    from tasks.core.files import killed_holder

    earlier = killed_holder(out)
    if earlier:
        run_logger(__name__).warning("%s supersedes an earlier run in %s that was killed before it finished (%s); "
                                     "it goes on from what that run left", flow, out, earlier)
    try:
        return body(*args)
    except (KeyboardInterrupt, TerminationSignal) as exc:
        return Cancelled(message=interrupted(exc, Path(out), flow=flow))
