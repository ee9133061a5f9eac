"""Thin Prefect task wrappers around the plain functions of each stage.

Tasks hand each other paths to files they wrote, never DataFrames of images. Cached
tasks are keyed on the content of their input files (``tasks.caching``); retries sit on
the tasks that touch disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task

from tasks import cohorts as cohorts_mod
from tasks import reports as reports_mod
from tasks import slices as slices_mod
from tasks import splits as splits_mod
from tasks.caching import content_cache_key_fn
from tasks.config import PrepareConfig
from tasks.extract import extract_shard
from tasks.io import atomic_write_json, atomic_write_parquet
from tasks.manifest import REJECT_COLUMNS, build_manifest, typed_frame

_CACHED = {"persist_result": True, "retries": 2, "retry_delay_seconds": 1}


def _work(out_dir: str) -> Path:
    return Path(out_dir) / ".work"


@task(name="filter-reports", cache_key_fn=content_cache_key_fn(files=("reports",)), **_CACHED)
def filter_reports(reports: str, config: PrepareConfig) -> dict[str, str]:
    """DEDUCE-style filter of the report export; derive each study's cohort (no text kept)."""
    r = config.reports
    result = reports_mod.filter_reports(
        reports_mod.read_reports(reports), radiology_type=r.radiology_type, pathology_type=r.pathology_type,
        radiology_terms=r.radiology_terms, pathology_terms=r.pathology_terms,
        start_date=r.start_date, end_date=r.end_date,
    )
    studies, unreadable = reports_mod.study_cohorts(
        result.kept, radiology_type=r.radiology_type, pathology_type=r.pathology_type,
        window_days=r.pathology_window_days,
    )
    out = Path(config.data.output_dir)
    rejects = typed_frame(
        [{"kind": "report", **row} for row in pd.concat([result.rejects, unreadable]).to_dict("records")],
        REJECT_COLUMNS,
    )
    counts = dict(result.counts)
    counts["radiology_without_birads"] = int(len(unreadable))
    counts["studies_per_derived_cohort"] = {
        str(k): int(v) for k, v in studies["cohort"].value_counts().sort_index().items()
    }
    return {
        "kept": str(atomic_write_parquet(out / "reports_filtered.parquet", result.kept)),
        "studies": str(atomic_write_parquet(_work(str(out)) / "report_studies.parquet", studies)),
        "rejects": str(atomic_write_parquet(_work(str(out)) / "report_rejects.parquet", rejects)),
        "summary": str(atomic_write_json(_work(str(out)) / "reports_summary.json", {"reports": counts})),
    }


@task(name="group-cohorts", cache_key_fn=content_cache_key_fn(files=("csv_files", "report_studies")), **_CACHED)
def group_cohorts(csv_files: list[str], data_root: str, report_studies: str | None,
                  config: PrepareConfig) -> dict[str, str]:
    """Group volumes into cohorts from the labels CSV and/or report-derived study cohorts."""
    use_labels = config.data.use_labels
    tables = cohorts_mod.load_bcs_tables(data_root, require_labels=use_labels and report_studies is None)
    sources, label_rejects = [], tables.labels.iloc[0:0][["patient_id", "study_uid", "view"]].assign(reason="")
    if use_labels and len(tables.labels):
        from_labels, label_rejects = cohorts_mod.cohorts_from_labels(tables.labels)
        sources.append(from_labels)
    if report_studies is not None:
        sources.append(cohorts_mod.cohorts_from_reports(pd.read_parquet(report_studies), tables.file_paths))
    if not sources:
        raise ValueError(
            f"{data_root}: no cohort source: no labels CSV was used and no report export was given; "
            "pass --reports FILE or put the BCS-DBT labels CSVs in the data root"
        )
    combined, disagreements = cohorts_mod.combine_cohorts(sources)
    volumes = cohorts_mod.build_volume_table(
        tables.file_paths, combined, tables.boxes, cohort_rejects=label_rejects
    )
    work = _work(config.data.output_dir)
    summary = {
        "cohort_sources": [str(s["cohort_source"].iloc[0]) for s in sources if len(s)],
        "volumes": cohorts_mod.volume_counts(volumes),
        "label_rejects": int(len(label_rejects)),
        "disagreements": disagreements,
    }
    rejects = typed_frame(
        [{"kind": "label", **r} for r in label_rejects.to_dict("records")], REJECT_COLUMNS
    )
    return {
        "volumes": str(atomic_write_parquet(work / "volumes.parquet", volumes)),
        "boxes": str(atomic_write_parquet(work / "boxes.parquet", tables.boxes)),
        "rejects": str(atomic_write_parquet(work / "cohort_rejects.parquet", rejects)),
        "summary": str(atomic_write_json(work / "cohort_summary.part.json", summary)),
    }


@task(name="select-slices", cache_key_fn=content_cache_key_fn(files=("volumes", "boxes")), **_CACHED)
def select_slices(volumes: str, boxes: str, config: PrepareConfig) -> str:
    """Plan which frames of which volumes become images (the configured strategy)."""
    s = config.slices
    plan = slices_mod.select_slices(
        pd.read_parquet(volumes), pd.read_parquet(boxes), strategy=s.strategy,
        normal_fraction=s.normal_fraction, seed=s.seed, lesion_window=s.lesion_window,
    )
    return str(atomic_write_parquet(_work(config.data.output_dir) / "plan.parquet", plan))


@task(name="split-patients", cache_key_fn=content_cache_key_fn(files=("volumes",)), **_CACHED)
def split_patients(volumes: str, config: PrepareConfig) -> str:
    """Assign every patient to train, validation or test (stratified, patient-disjoint)."""
    table = pd.read_parquet(volumes)
    splits = splits_mod.split_patients(
        table, fractions=config.slices.split_fractions, seed=config.slices.seed
    )
    return str(atomic_write_parquet(_work(config.data.output_dir) / "splits.parquet", splits))


@task(name="check-splits")
def check_splits(plan: str, splits: str, config: PrepareConfig) -> dict[str, Any]:
    """Stop before extraction if a split would lack tumour or normal images (bad input: no retries)."""
    return splits_mod.check_split_classes(
        pd.read_parquet(plan), pd.read_parquet(splits), fractions=config.slices.split_fractions
    )


@task(name="extract-shard", retries=2, retry_delay_seconds=1)
def extract_shard_task(jobs: list[dict[str, Any]], data_root: str, out_dir: str, image_size: int, seed: int) -> dict[str, Any]:
    """Decode and write one shard of volumes (records make reruns skip finished volumes)."""
    return extract_shard(jobs, data_root=data_root, out_dir=out_dir, image_size=image_size, seed=seed)


@task(name="write-manifest", cache_key_fn=content_cache_key_fn(files=("plan", "splits", "records", "cohort_parts")),
      **_CACHED)
def write_manifest(plan: str, splits: str, records: list[str], cohort_parts: list[str], config: PrepareConfig) -> dict[str, str]:
    """Write manifest.parquet, rejects.parquet and cohort_summary.json (with the leak audit)."""
    out = Path(config.data.output_dir)
    plan_df, splits_df = pd.read_parquet(plan), pd.read_parquet(splits)
    manifest, volume_rejects = build_manifest(
        plan_df, splits_df, records, out_dir=out, lesion_window=config.slices.lesion_window
    )
    splits_mod.assert_disjoint(manifest)
    earlier = [pd.read_parquet(p) for p in cohort_parts if p.endswith(".parquet")]
    rejects = pd.concat([*earlier, volume_rejects], ignore_index=True) if earlier else volume_rejects
    summary: dict[str, Any] = {}
    for part in cohort_parts:
        if part.endswith(".json"):
            summary.update(json.loads(Path(part).read_text()))
    summary.update({
        "strategy": config.slices.strategy,
        "image_size": config.slices.image_size,
        "seed": config.slices.seed,
        "split_fractions": list(config.slices.split_fractions),
        "planned_volumes": int(len(plan_df)),
        "rejects": {str(k): int(v) for k, v in rejects["kind"].value_counts().sort_index().items()},
        "rejected_volumes": int((rejects["kind"] == "volume").sum()),
        "images": int(len(manifest)),
        "images_per_split_label": {
            f"{s}/{lab}": int(n)
            for (s, lab), n in manifest.groupby(["split", "label"]).size().sort_index().items()
        },
        "audit": splits_mod.split_audit(manifest),
    })
    return {
        "manifest": str(atomic_write_parquet(out / "manifest.parquet", manifest)),
        "rejects": str(atomic_write_parquet(out / "rejects.parquet", rejects)),
        "summary": str(atomic_write_json(out / "cohort_summary.json", summary)),
    }
