"""The ``prepare-data`` flow: cohorts -> slice plan -> patient splits -> extraction -> manifest.

The tasks live in :mod:`tasks.prepare.steps`, what is published and the reject checks in
:mod:`tasks.prepare.publish`, the rerun of a cached step whose files are gone in
:mod:`tasks.infra.rerun`; this module only calls them in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from tasks.core.config import PrepareConfig
from tasks.core.files import ensure_writable_dir, output_lock
from tasks.infra.lifecycle import cancellable
from tasks.infra.process_defaults import apply_process_defaults
from tasks.infra.rerun import cached
from tasks.infra.run_names import config_run_name
from tasks.prepare import steps
from tasks.prepare.bcs_csv import cohort_csv_files
from tasks.prepare.extract_run import run_extraction
from tasks.prepare.publish import check_label_rejects, fail_on_rejects, publish_outputs
from tasks.prepare.slices import extraction_jobs


def _describe(cfg: PrepareConfig) -> str:
    """``single-slice 224px`` of ``prepare single-slice 224px``."""
    return f"{cfg.slices.strategy} {cfg.slices.image_size}px"


_run_name = config_run_name("prepare", PrepareConfig, _describe)


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
    apply_process_defaults()  # log redaction and the environment defaults, in a deployment's run too
    out = ensure_writable_dir(config.data.output_dir, what="output folder (--out)")
    with output_lock(out, what=f"flow run {flow_run.name or ''} ({flow_run.id or ''})"):
        return cancellable(_prepare, config, out, out=out, flow="prepare-data")


def _prepare(config: PrepareConfig, out: Path) -> dict[str, Any]:
    steps.remove_temporaries(out)
    cache = {"result_storage": (out / ".cache").resolve()}
    reports = cached(steps.filter_reports, cache, config.data.reports, config) if config.data.reports else None
    csv_files = cohort_csv_files(config.data.data_root, require_labels=config.data.use_labels and reports is None)
    cohort = cached(steps.group_cohorts, cache, csv_files, config.data.data_root,
                     steps.report_output(reports, "studies"), config)
    plan = cached(steps.select_slices, cache, cohort["volumes"], cohort["boxes"], config)
    splits = cached(steps.split_patients, cache, cohort["volumes"], config)
    parts = steps.audit_parts(cohort, reports)
    kept = steps.report_output(reports, "kept")
    # Label-level faults (no label, no flag) are known now: stop before extracting anything.
    check_label_rejects(cohort["volumes"], plan, parts, config, kept=kept)
    # A split without both classes cannot train or be evaluated: stop before extracting too.
    steps.check_splits(plan, splits, config)
    # Missing files cost a listing each to find: stop on them before extraction writes anything.
    check_label_rejects(cohort["volumes"], plan, parts, config, kept=kept, check_files=True)
    records = run_extraction(extraction_jobs(plan), config)
    result = cached(steps.write_manifest, cache, plan, splits, sorted(records), parts, config,
                     cohort["volumes"], cohort["boxes"])
    fail_on_rejects(result, config, kept)
    published = publish_outputs(result, config.data.output_dir, kept=kept)
    outputs = {key: published[key] for key in ("manifest", "rejects", "summary")}
    steps.publish_cohort_table(outputs["manifest"])
    return outputs
