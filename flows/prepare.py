"""The ``prepare-data`` flow: cohorts -> slice plan -> patient splits -> extraction -> manifest."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.runtime import flow_run

from tasks import cohorts as cohorts_mod
from tasks import lifecycle, steps
from tasks.config import PrepareConfig
from tasks.extract import (
    SERIAL_BELOW_SECONDS,
    balanced_shards,
    estimated_seconds,
    remove_stale_temporaries,
    split_finished,
)
from tasks.io import ensure_writable_dir, output_lock


def _run_name() -> str:
    """``prepare single-slice 224px``; never raises (a bad config fails the run later, with its reason)."""
    try:
        config = flow_run.parameters.get("config")
        s = getattr(config, "slices", None) or PrepareConfig.model_validate(config or {}).slices
    except Exception:
        return "prepare (invalid config)"
    return f"prepare {s.strategy} {s.image_size}px"


def _task_runner(config: PrepareConfig) -> Any:
    """The task runner of the extraction shards, or None to run them in this process.

    ``process``: Prefect's process pool of ``workers`` processes; ``dask``: prefect-dask's
    DaskTaskRunner (see :func:`_dask_runner`); ``serial``: None.
    """
    s = config.slices
    if s.executor == "serial":
        return None
    if s.executor == "dask":
        return _dask_runner(s.dask_address, s.workers or os.cpu_count() or 1)
    from prefect.task_runners import ProcessPoolTaskRunner

    # Each worker watches this process and exits when it is gone (tasks/lifecycle.py).
    return ProcessPoolTaskRunner(max_workers=s.workers or os.cpu_count() or 1,
                                 initializer=lifecycle.worker_initializer, initargs=(os.getpid(),))


def _dask_runner(address: str | None, workers: int) -> Any:
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
    api_url = configured or os.environ.get("PREFECT_API_URL") or _ephemeral_api_url()
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


def _ephemeral_api_url() -> str | None:
    """The URL of this process's temporary Prefect server, when no API is configured.

    Without a configured PREFECT_API_URL each spawned worker would start a temporary
    server of its own (seconds each) and its task runs would not show in this run's
    view. Prefect keeps its temporary servers in a class-level registry; there is no
    public accessor, so this reads it, and returns None when an API is configured or no
    temporary server runs.
    """
    if os.environ.get("PREFECT_API_URL"):
        return None
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return None
    from prefect.server.api.server import SubprocessASGIServer

    for server in list(getattr(SubprocessASGIServer, "_instances", {}).values()):
        if getattr(server, "running", False):
            return str(server.api_url)
    return None


@contextmanager
def _workers_see_ephemeral_api() -> Iterator[None]:
    """While extraction runs, let spawned workers inherit the temporary server's URL.

    The variable is removed again afterwards: the temporary server stops with the flow,
    and a URL left in the environment would point later runs in this process at nothing.
    """
    url = _ephemeral_api_url()
    if url is None:
        yield
        return
    os.environ["PREFECT_API_URL"] = url
    try:
        yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def _extract(jobs: list[dict[str, Any]], config: PrepareConfig) -> list[str]:
    """Run the extraction shards on the configured runner, with progress in the UI and terminal."""
    from rich.progress import Progress

    logger = get_run_logger()
    out = config.data.output_dir
    s = config.slices
    done, todo = split_finished(jobs, data_root=config.data.data_root, out_dir=out,
                                image_size=s.image_size, seed=s.seed, full_resolution=s.full_resolution)
    if not todo:
        logger.info("extraction: all %d volumes already extracted with the same inputs", len(jobs))
        create_progress_artifact(100.0, key="extraction-progress",
                                 description=f"Extraction of {len(jobs)} volumes: nothing to do")
        return done
    shards = balanced_shards(todo, s.shard_size)
    params = [{"jobs": shard, "data_root": config.data.data_root, "out_dir": out,
               "image_size": s.image_size, "seed": s.seed, "full_resolution": s.full_resolution}
              for shard in shards]
    artifact = create_progress_artifact(
        100.0 * len(done) / len(jobs), key="extraction-progress",
        description=f"Extraction of {len(todo)} of {len(jobs)} volumes in {len(shards)} shards")
    records: list[str] = list(done)
    decoded = 0
    runner = _task_runner(config)
    if runner is not None and s.executor == "process":
        seconds = estimated_seconds(todo, data_root=config.data.data_root, image_size=s.image_size,
                                    full_resolution=s.full_resolution)
        if seconds < SERIAL_BELOW_SECONDS:
            # Starting worker processes (each imports Prefect and the tasks) costs more
            # than this plan's whole decode: run it here.
            logger.info("extraction: %d volumes, about %.1f s of decoding: run in this process, "
                        "no worker pool", len(todo), seconds)
            runner = None
    bar = Progress(disable=not sys.stderr.isatty(), transient=False)
    with _workers_see_ephemeral_api(), bar, (runner if runner is not None else nullcontext()):
        bar_task = bar.add_task("extracting volumes", total=len(todo))
        if runner is None:
            results = (steps.extract_shard_task(**p) for p in params)
        else:
            futures = [runner.submit(steps.extract_shard_task, p) for p in params]
            results = (f.result() for f in futures)
        try:
            for done, (shard, result) in enumerate(zip(shards, results), start=1):
                records.extend(result["records"])
                decoded += result["decoded"]
                bar.advance(bar_task, len(shard))
                update_progress_artifact(artifact, 100.0 * done / max(len(shards), 1))
        except BaseException as exc:
            if not isinstance(exc, Exception):  # SIGTERM, Ctrl-C: the runner would wait for shards in flight
                lifecycle.stop_workers()
            raise
    logger.info("extraction: %d volumes, %d extracted now, %d reused from earlier runs",
                len(jobs), decoded, len(jobs) - decoded)
    return records


def _output_paths(result: Any) -> list[Path]:
    values = result.values() if isinstance(result, dict) else [result]
    return [Path(v) for v in values if isinstance(v, str)]


def _cached(step: Any, cache: dict[str, Any], *args: Any) -> Any:
    """Call a cached task; if its cached result names files that are gone, run it again."""
    result = step.with_options(**cache)(*args)
    if not all(p.exists() for p in _output_paths(result)):
        get_run_logger().info("%s: cached outputs are missing, recomputing", step.name)
        result = step.with_options(**cache, refresh_cache=True)(*args)
    return result


@flow(name="prepare-data", flow_run_name=_run_name, log_prints=True)
def prepare_data(config: PrepareConfig = PrepareConfig()) -> dict[str, Any]:
    """Prepare BCS-DBT volumes into 8-bit slices, a Parquet manifest and an audit.

    The output folder is checked for writing and locked (one run at a time) before any
    work. SIGTERM or Ctrl-C ends the run as Cancelled, with its workers stopped and its
    temporary files removed; the same command resumes it.

    Args:
        config: Inputs, slice strategy, splits and extraction settings.

    Returns:
        Paths of ``manifest``, ``rejects`` and ``summary`` (``cohort_summary.json``).
    """
    from prefect.exceptions import TerminationSignal
    from prefect.states import Cancelled

    logger = get_run_logger()
    out = ensure_writable_dir(config.data.output_dir, what="output folder (--out)")
    with output_lock(out, what=f"flow run {flow_run.name or ''} ({flow_run.id or ''})"):
        try:
            return _prepare(config, out)
        except (KeyboardInterrupt, TerminationSignal) as exc:
            stopped = lifecycle.stop_workers()
            removed = remove_stale_temporaries(out)
            message = (f"interrupted by {lifecycle.signal_name(exc)}: {stopped} worker processes stopped, "
                       f"{removed} partial files removed; run the same command again to resume")
            logger.warning("prepare-data %s", message)
            return Cancelled(message=message)


def _fail_on_rejects(result: dict[str, Any], config: PrepareConfig, kept: str | None) -> None:
    """Publish the rejects and the summary without a manifest, and stop, if too much was rejected."""
    summary = json.loads(Path(result["summary"]).read_text())
    error = cohorts_mod.reject_fraction_error(summary.get("accounting", {}))
    if error is None:
        return
    steps.publish_outputs({"rejects": result["rejects"], "summary": result["summary"]},
                          config.data.output_dir, kept=kept)
    raise ValueError(error)


def _prepare(config: PrepareConfig, out: Path) -> dict[str, Any]:
    logger = get_run_logger()
    stale = remove_stale_temporaries(out)
    if stale:
        logger.info("removed %d temporary files left by an interrupted run", stale)
    cache = {"result_storage": (out / ".cache").resolve()}

    reports = None
    if config.data.reports:
        reports = _cached(steps.filter_reports, cache, config.data.reports, config)
    csvs = cohorts_mod.find_bcs_csvs(config.data.data_root,
                                     require_labels=config.data.use_labels and reports is None)
    csv_files = sorted(str(p) for paths in csvs.values() for p in paths)
    cohort = _cached(steps.group_cohorts, cache, csv_files, config.data.data_root,
                     reports["studies"] if reports else None, config)
    plan = _cached(steps.select_slices, cache, cohort["volumes"], cohort["boxes"], config)
    splits = _cached(steps.split_patients, cache, cohort["volumes"], config)
    parts = [cohort["summary"], cohort["rejects"]]
    if reports:
        parts += [reports["summary"], reports["rejects"]]
    kept = reports["kept"] if reports else None
    # Label-level faults (no label, no flag) are known now: stop before extracting anything.
    steps.check_label_rejects(cohort["volumes"], plan, parts, config, kept=kept)
    # A split without both classes cannot train or be evaluated: stop before extracting too.
    steps.check_splits(plan, splits, config)
    jobs = pd.read_parquet(plan)[["patient_id", "study_uid", "view", "descriptive_path",
                                  "classic_path", "frames_rule"]].to_dict("records")
    records = _extract(jobs, config)
    result = _cached(steps.write_manifest, cache, plan, splits, sorted(records), parts, config,
                     cohort["volumes"], cohort["boxes"])
    _fail_on_rejects(result, config, kept)
    published = steps.publish_outputs(result, config.data.output_dir, kept=kept)
    outputs = {key: published[key] for key in ("manifest", "rejects", "summary")}
    manifest = pd.read_parquet(outputs["manifest"])
    table = (manifest.groupby(["split", "cohort"]).agg(images=("image_path", "size"),
                                                        patients=("patient_id", "nunique"))
             .reset_index().to_dict("records"))
    create_table_artifact(table, key="cohort-flow", description="Images and patients per split and cohort")
    logger.info("manifest: %d images -> %s", len(manifest), outputs["manifest"])
    return outputs
