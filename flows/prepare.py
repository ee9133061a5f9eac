"""The ``prepare-data`` flow: cohorts -> slice plan -> patient splits -> extraction -> manifest.

The tasks live in :mod:`tasks.prepare_steps`, the runners and caching in :mod:`tasks.runtime`;
this module only calls them in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from tasks import cohorts as cohorts_mod
from tasks import lifecycle
from tasks import prepare_steps as steps
from tasks.config import PrepareConfig
from tasks.extract import remove_stale_temporaries
from tasks.runtime import cached, dask_runner as _dask_runner  # noqa: F401 - re-export for old callers
from tasks.io import ensure_writable_dir, output_lock


def _run_name() -> str:
    """``prepare single-slice 224px``; never raises (a bad config fails the run later, with its reason)."""
    try:
        config = flow_run.parameters.get("config")
        s = getattr(config, "slices", None) or PrepareConfig.model_validate(config or {}).slices
    except Exception:
        return "prepare (invalid config)"
    return f"prepare {s.strategy} {s.image_size}px"


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


def _prepare(config: PrepareConfig, out: Path) -> dict[str, Any]:
    logger = get_run_logger()
    stale = remove_stale_temporaries(out)
    if stale:
        logger.info("removed %d temporary files left by an interrupted run", stale)
    cache = {"result_storage": (out / ".cache").resolve()}

    reports = None
    if config.data.reports:
        reports = cached(steps.filter_reports, cache, config.data.reports, config)
    csvs = cohorts_mod.find_bcs_csvs(config.data.data_root,
                                     require_labels=config.data.use_labels and reports is None)
    csv_files = sorted(str(p) for paths in csvs.values() for p in paths)
    cohort = cached(steps.group_cohorts, cache, csv_files, config.data.data_root,
                     reports["studies"] if reports else None, config)
    plan = cached(steps.select_slices, cache, cohort["volumes"], cohort["boxes"], config)
    splits = cached(steps.split_patients, cache, cohort["volumes"], config)
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
    records = steps.run_extraction(jobs, config)
    result = cached(steps.write_manifest, cache, plan, splits, sorted(records), parts, config,
                     cohort["volumes"], cohort["boxes"])
    steps.fail_on_rejects(result, config, kept)
    published = steps.publish_outputs(result, config.data.output_dir, kept=kept)
    outputs = {key: published[key] for key in ("manifest", "rejects", "summary")}
    manifest = pd.read_parquet(outputs["manifest"])
    table = (manifest.groupby(["split", "cohort"]).agg(images=("image_path", "size"),
                                                        patients=("patient_id", "nunique"))
             .reset_index().to_dict("records"))
    create_table_artifact(table, key="cohort-flow", description="Images and patients per split and cohort")
    logger.info("manifest: %d images -> %s", len(manifest), outputs["manifest"])
    return outputs
