"""Where task runs execute: the task runners, and the temporary Prefect API their workers report to.

* :func:`task_runner` / :func:`dask_runner`: where extraction shards run (a process pool,
  prefect-dask's ``DaskTaskRunner``, or this process);
* :func:`ephemeral_api_url` / :func:`workers_see_ephemeral_api`: the URL of Prefect's
  temporary server, handed to worker processes so their task runs report to this run.

A cached step that runs again when its files are gone is :mod:`tasks.infra.rerun`; the
``tomoflow-pipeline`` flow's output folders are :mod:`tasks.pipeline.layout`.

Prefect's start-up settings are in :mod:`flows.prefect_env` (applied before Prefect reads them).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from collections.abc import Iterator
from typing import Any

from tasks.infra import lifecycle
from tasks.core.config import PrepareConfig


def task_runner(config: PrepareConfig) -> Any:
    """The task runner of the extraction shards, or None to run them in this process.

    ``process``: Prefect's process pool of ``workers`` processes; ``dask``: prefect-dask's
    DaskTaskRunner (see :func:`dask_runner`); ``serial``: None.
    """
    s = config.slices
    if s.executor == "serial":
        return None
    if s.executor == "dask":
        return dask_runner(s.dask_address, s.workers or os.cpu_count() or 1)
    from prefect.task_runners import ProcessPoolTaskRunner

    # Each worker watches this process and exits when it is gone (tasks/infra/lifecycle.py).
    return ProcessPoolTaskRunner(max_workers=s.workers or os.cpu_count() or 1,
                                 initializer=lifecycle.worker_initializer, initargs=(os.getpid(),))


def dask_runner(address: str | None, workers: int) -> Any:
    """prefect-dask's DaskTaskRunner on the scheduler at ``address``, else on a LocalCluster.

    The LocalCluster (started on first submit, closed with the runner) has ``workers``
    worker processes of one thread each (two threads decode no faster than one: see
    docs/scaling.md), listens on 127.0.0.1 only and serves no dashboard.

    Each task run executes on a Dask worker, which reports it to the Prefect API named in
    the settings that prefect-dask sends along with every task. When this flow runs on a
    temporary (ephemeral) server those settings name no API, and every worker would start
    a temporary server of its own (seconds each) that records the task runs out of sight;
    so the temporary server's URL is put into the settings that travel with each submit.
    A cluster on other machines cannot reach a server on this machine's loopback
    interface: that combination is refused before any shard is submitted.

    Raises:
        ValueError: ``address`` is not on this machine and the Prefect API is on loopback.
    """
    import ipaddress
    from urllib.parse import urlsplit

    from prefect.context import SettingsContext, get_settings_context
    from prefect.settings import PREFECT_API_URL, get_current_settings
    from prefect_dask import DaskTaskRunner as _DaskTaskRunner  # optional: pip install prefect-dask

    def is_loopback(url: str) -> bool:
        host = urlsplit(url if "://" in url else f"tcp://{url}").hostname
        if host == "localhost":
            return True
        try:
            return host is not None and ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False  # a host name: assume another machine

    configured = get_current_settings().api.url
    api_url = configured or os.environ.get("PREFECT_API_URL") or ephemeral_api_url()
    if address and api_url and not is_loopback(address) and is_loopback(api_url):
        raise ValueError(
            f"dask_address {address!r} is a scheduler on another machine, but the Prefect API "
            f"{api_url!r} is on this machine's loopback interface, which its workers cannot "
            "reach. Run a Prefect server they can reach (prefect server start --host 0.0.0.0) "
            "and set PREFECT_API_URL to its address, or use a scheduler on 127.0.0.1."
        )
    sent: SettingsContext | None = None
    if api_url and not configured:
        # Built once: temporary_settings() would rebuild the settings on every submit (~20 ms).
        current = get_settings_context()
        sent = SettingsContext(profile=current.profile,
                               settings=current.settings.copy_with_update(updates={PREFECT_API_URL: api_url}))

    class DaskTaskRunner(_DaskTaskRunner):  # the same name keeps the logger "prefect.task_runner.dask"
        def submit(self, task: Any, parameters: dict[str, Any], wait_for: Any = None,
                   dependencies: Any = None) -> Any:
            if sent is None:
                return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)
            with sent.model_copy():  # prefect-dask serializes the settings in force at submit
                return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)

    if address:
        return DaskTaskRunner(address=address)
    # dashboard_address=None turns the dashboard off, but the scheduler still serves its
    # health routes on 8787; a free loopback port instead lets two runs share a machine.
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": workers, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
        "dashboard_address": None, "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"},
    })


def ephemeral_api_url() -> str | None:
    """The URL of this process's temporary Prefect server, when no API is configured.

    Without a configured PREFECT_API_URL each spawned worker would start a temporary
    server of its own (seconds each) and its task runs would not show in this run's
    view. Prefect has no public accessor for it (:mod:`tasks.infra.prefect_internals` reads it);
    None when an API is configured or no temporary server runs.
    """
    if os.environ.get("PREFECT_API_URL"):
        return None
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return None
    from tasks.infra.prefect_internals import running_server_url

    return running_server_url()


@contextmanager
def workers_see_ephemeral_api() -> Iterator[None]:
    """While extraction runs, let spawned workers inherit the temporary server's URL.

    The variable is removed again afterwards: the temporary server stops with the flow,
    and a URL left in the environment would point later runs in this process at nothing.
    """
    url = ephemeral_api_url()
    if url is None:
        yield
        return
    os.environ["PREFECT_API_URL"] = url
    try:
        yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)
