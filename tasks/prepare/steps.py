"""Prefect tasks of the ``prepare-data`` flow: thin wrappers around the plain functions of each stage.

Tasks hand each other paths to files they wrote, never DataFrames of images. Cached
tasks are keyed on the content of their input files (``tasks.infra.caching``); retries sit on
the tasks that touch disk, and only transient errors are retried (``tasks.infra.retry``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from tasks.core.config import PrepareConfig
from tasks.core.files import atomic_write_json, atomic_write_parquet, remove_stale_temporaries
from tasks.infra.caching import content_cache_key_fn, step_dir
from tasks.infra.retry import retry_policy
from tasks.prepare import outputs
from tasks.prepare import slices as slices_mod
from tasks.prepare import splits as splits_mod
from tasks.prepare.extract import extract_shard

_CACHED = {"persist_result": True, **retry_policy(retries=2, delay_seconds=1)}

# Which parameters each cached step keys on content. The same tuples build the Prefect
# cache key and the step's output folder (tasks.infra.caching.step_dir), so the files a cached
# result names were written by a run with exactly that key, never by a run with other
# settings into the same output folder.
_FILES = {
    "filter-reports": ("reports",),
    "group-cohorts": ("csv_files", "report_studies"),
    "select-slices": ("volumes", "boxes"),
    "split-patients": ("volumes",),
    "write-manifest": ("plan", "splits", "records", "cohort_parts", "volumes", "boxes"),
}


def _cache_key_fn(step: str):  # noqa: ANN202 - Prefect's cache_key_fn signature
    return content_cache_key_fn(files=_FILES[step])


def _dir(step: str, config: PrepareConfig, **parameters: Any) -> Path:
    """The keyed folder of ``step`` for these parameters (see :func:`tasks.infra.caching.step_dir`)."""
    return step_dir(step, {**parameters, "config": config}, out_dir=config.data.output_dir, files=_FILES[step])


@task(name="filter-reports", cache_key_fn=_cache_key_fn("filter-reports"), **_CACHED)
def filter_reports(reports: str, config: PrepareConfig) -> dict[str, str]:
    """DEDUCE-style filter of the report export; derive each study's cohort (no text kept)."""
    work = _dir("filter-reports", config, reports=reports)
    t = outputs.report_tables(reports, config.reports)
    return {
        "kept": str(atomic_write_parquet(work / "reports_filtered.parquet", t.kept)),
        "studies": str(atomic_write_parquet(work / "report_studies.parquet", t.studies)),
        "rejects": str(atomic_write_parquet(work / "report_rejects.parquet", t.rejects)),
        "summary": str(atomic_write_json(work / "reports_summary.json", {"reports": t.counts})),
    }


@task(name="group-cohorts", cache_key_fn=_cache_key_fn("group-cohorts"), **_CACHED)
def group_cohorts(csv_files: list[str], data_root: str, report_studies: str | None,
                  config: PrepareConfig) -> dict[str, str]:
    """Group volumes into cohorts from the labels CSV and/or report-derived study cohorts."""
    t = outputs.cohort_tables(data_root, report_studies, use_labels=config.data.use_labels)
    work = _dir("group-cohorts", config, csv_files=csv_files, data_root=data_root,
                report_studies=report_studies)
    return {
        "volumes": str(atomic_write_parquet(work / "volumes.parquet", t.volumes)),
        "boxes": str(atomic_write_parquet(work / "boxes.parquet", t.boxes)),
        "rejects": str(atomic_write_parquet(work / "cohort_rejects.parquet", t.rejects)),
        "summary": str(atomic_write_json(work / "cohort_summary.part.json", t.summary)),
    }


@task(name="select-slices", cache_key_fn=_cache_key_fn("select-slices"), **_CACHED)
def select_slices(volumes: str, boxes: str, config: PrepareConfig) -> str:
    """Plan which frames of which volumes become images (the configured strategy)."""
    s = config.slices
    plan = slices_mod.select_slices(
        pd.read_parquet(volumes), pd.read_parquet(boxes), strategy=s.strategy,
        normal_fraction=s.normal_fraction, seed=s.seed, lesion_window=s.lesion_window,
    )
    work = _dir("select-slices", config, volumes=volumes, boxes=boxes)
    return str(atomic_write_parquet(work / "plan.parquet", plan))


@task(name="split-patients", cache_key_fn=_cache_key_fn("split-patients"), **_CACHED)
def split_patients(volumes: str, config: PrepareConfig) -> str:
    """Assign every patient to train, validation or test (stratified, patient-disjoint)."""
    table = pd.read_parquet(volumes)
    splits = splits_mod.split_patients(
        table, fractions=config.slices.split_fractions, seed=config.slices.seed
    )
    work = _dir("split-patients", config, volumes=volumes)
    return str(atomic_write_parquet(work / "splits.parquet", splits))


@task(name="check-splits")
def check_splits(plan: str, splits: str, config: PrepareConfig) -> dict[str, Any]:
    """Stop before extraction if a split would lack tumour or normal images (bad input: no retries)."""
    if not config.slices.require_both_classes:  # an external collection, evaluated only
        return splits_mod.split_class_counts(pd.read_parquet(plan), pd.read_parquet(splits))
    return splits_mod.check_split_classes(
        pd.read_parquet(plan), pd.read_parquet(splits), fractions=config.slices.split_fractions
    )


@task(name="extract-shard", **retry_policy(retries=2, delay_seconds=1))
def extract_shard_task(jobs: list[dict[str, Any]], data_root: str, out_dir: str, image_size: int, seed: int,
                       full_resolution: bool = False, extra_roots: tuple[str, ...] = ()) -> dict[str, Any]:
    """Decode and write one shard of volumes (records make reruns skip finished volumes)."""
    return extract_shard(jobs, data_root=data_root, out_dir=out_dir, image_size=image_size, seed=seed,
                         full_resolution=full_resolution, extra_roots=tuple(extra_roots))


@task(name="write-manifest", cache_key_fn=_cache_key_fn("write-manifest"), **_CACHED)
def write_manifest(plan: str, splits: str, records: list[str], cohort_parts: list[str], config: PrepareConfig,
                   volumes: str | None = None, boxes: str | None = None) -> dict[str, Any]:
    """Write the manifest, the rejects and the summary (with the leak audit and the accounting).

    The files go into this step's keyed folder; :func:`tasks.prepare.publish.publish_outputs` copies them to
    ``manifest.parquet``, ``rejects.parquet`` and ``cohort_summary.json``. Every volume of
    the file-paths CSVs (``volumes``) ends in the manifest or in the rejects with a reason,
    and boxes that do not fit their frame are rejected one by one (``boxes``).
    """
    work = _dir("write-manifest", config, plan=plan, splits=splits, records=records, cohort_parts=cohort_parts,
                volumes=volumes, boxes=boxes)
    t = outputs.manifest_tables(pd.read_parquet(plan), pd.read_parquet(splits), records, cohort_parts, config,
                                None if volumes is None else pd.read_parquet(volumes),
                                None if boxes is None else pd.read_parquet(boxes))
    return {
        "manifest": str(atomic_write_parquet(work / "manifest.parquet", t.manifest)),
        "rejects": str(atomic_write_parquet(work / "rejects.parquet", t.rejects)),
        "summary": str(atomic_write_json(work / "cohort_summary.json", t.summary)),
    }


def remove_temporaries(out: Path) -> int:
    """Remove the temporary files an interrupted run left in ``out`` (logged); how many."""
    stale = remove_stale_temporaries(out)
    if stale:
        get_run_logger().info("removed %d temporary files left by an interrupted run", stale)
    return stale


def report_output(reports: dict[str, str] | None, key: str) -> str | None:
    """One of filter-reports' outputs (``kept``, ``studies``, ...), or None for a run without reports."""
    return reports[key] if reports else None


def audit_parts(cohort: dict[str, str], reports: dict[str, str] | None) -> list[str]:
    """The summary and rejects files of group-cohorts (and filter-reports) that the manifest step merges."""
    parts = [cohort["summary"], cohort["rejects"]]
    if reports:
        parts += [reports["summary"], reports["rejects"]]
    return parts


def publish_cohort_table(manifest_path: str) -> None:
    """The ``cohort-flow`` artifact (images and patients per split and cohort) and a log line."""
    manifest = pd.read_parquet(manifest_path)
    table = (manifest.groupby(["split", "cohort"]).agg(images=("image_path", "size"),
                                                        patients=("patient_id", "nunique"))
             .reset_index().to_dict("records"))
    create_table_artifact(table, key="cohort-flow", description="Images and patients per split and cohort")
    get_run_logger().info("manifest: %d images -> %s", len(manifest), manifest_path)
