"""The ``prepare-data`` flow: cohorts -> slice plan -> patient splits -> extraction -> manifest."""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.runtime import flow_run

from tasks import cohorts as cohorts_mod
from tasks import steps
from tasks.config import PrepareConfig
from tasks.extract import remove_stale_temporaries, shard_jobs, split_finished


def _run_name() -> str:
    config = flow_run.parameters.get("config")
    s = getattr(config, "slices", None) or PrepareConfig.model_validate(config or {}).slices
    return f"prepare {s.strategy} {s.image_size}px"


def _task_runner(config: PrepareConfig) -> Any:
    s = config.slices
    if s.executor == "serial":
        return None
    if s.executor == "dask":
        from prefect_dask import DaskTaskRunner  # optional dependency: pip install prefect-dask

        if s.dask_address:
            return DaskTaskRunner(address=s.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": s.workers or os.cpu_count() or 1,
                                              "threads_per_worker": 1, "processes": True})
    from prefect.task_runners import ProcessPoolTaskRunner

    _share_ephemeral_api()
    return ProcessPoolTaskRunner(max_workers=s.workers or os.cpu_count() or 1)


def _share_ephemeral_api() -> None:
    """Point worker processes at this process's temporary Prefect server.

    Without a configured PREFECT_API_URL each spawned worker would start a temporary
    server of its own (seconds each) and its task runs would not show in this run's
    view. Prefect keeps its temporary servers in a class-level registry; there is no
    public accessor, so this reads it and does nothing when none is running.
    """
    if os.environ.get("PREFECT_API_URL"):
        return
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return
    from prefect.server.api.server import SubprocessASGIServer

    for server in list(getattr(SubprocessASGIServer, "_instances", {}).values()):
        if getattr(server, "running", False):
            os.environ["PREFECT_API_URL"] = server.api_url
            return


def _extract(jobs: list[dict[str, Any]], config: PrepareConfig) -> list[str]:
    """Run the extraction shards on the configured runner, with progress in the UI and terminal."""
    from rich.progress import Progress

    logger = get_run_logger()
    out = config.data.output_dir
    s = config.slices
    done, todo = split_finished(jobs, data_root=config.data.data_root, out_dir=out,
                                image_size=s.image_size, seed=s.seed)
    if not todo:
        logger.info("extraction: all %d volumes already extracted with the same inputs", len(jobs))
        create_progress_artifact(100.0, key="extraction-progress",
                                 description=f"Extraction of {len(jobs)} volumes: nothing to do")
        return done
    shards = shard_jobs(todo, s.shard_size)
    params = [{"jobs": shard, "data_root": config.data.data_root, "out_dir": out,
               "image_size": s.image_size, "seed": s.seed} for shard in shards]
    artifact = create_progress_artifact(
        100.0 * len(done) / len(jobs), key="extraction-progress",
        description=f"Extraction of {len(todo)} of {len(jobs)} volumes in {len(shards)} shards")
    records: list[str] = list(done)
    decoded = 0
    runner = _task_runner(config)
    bar = Progress(disable=not sys.stderr.isatty(), transient=False)
    with bar, (runner if runner is not None else nullcontext()):
        bar_task = bar.add_task("extracting volumes", total=len(todo))
        if runner is None:
            results = (steps.extract_shard_task(**p) for p in params)
        else:
            futures = [runner.submit(steps.extract_shard_task, p) for p in params]
            results = (f.result() for f in futures)
        for done, (shard, result) in enumerate(zip(shards, results), start=1):
            records.extend(result["records"])
            decoded += result["decoded"]
            bar.advance(bar_task, len(shard))
            update_progress_artifact(artifact, 100.0 * done / max(len(shards), 1))
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

    Args:
        config: Inputs, slice strategy, splits and extraction settings.

    Returns:
        Paths of ``manifest``, ``rejects`` and ``summary`` (``cohort_summary.json``).
    """
    logger = get_run_logger()
    out = Path(config.data.output_dir)
    out.mkdir(parents=True, exist_ok=True)
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
    jobs = pd.read_parquet(plan)[["patient_id", "study_uid", "view", "descriptive_path",
                                  "classic_path", "frames_rule"]].to_dict("records")
    records = _extract(jobs, config)
    parts = [cohort["summary"], cohort["rejects"]]
    if reports:
        parts += [reports["summary"], reports["rejects"]]
    outputs = _cached(steps.write_manifest, cache, plan, splits, sorted(records), parts, config)
    manifest = pd.read_parquet(outputs["manifest"])
    table = (manifest.groupby(["split", "cohort"]).agg(images=("image_path", "size"),
                                                        patients=("patient_id", "nunique"))
             .reset_index().to_dict("records"))
    create_table_artifact(table, key="cohort-flow", description="Images and patients per split and cohort")
    logger.info("manifest: %d images -> %s", len(manifest), outputs["manifest"])
    return outputs
