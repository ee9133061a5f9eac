"""What each prepare-data step produces, as plain tables: no Prefect, no files written.

The Prefect tasks in :mod:`tasks.prepare.steps` call these, write the results atomically into
their keyed folders and hand on the paths. The rejects table and the summary are assembled
here once (:func:`merge_rejects`, :func:`merge_summary`) for the manifest step and for the
checks that stop a run before extraction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.core.config import PrepareConfig, ReportsConfig
from tasks.core.schema import REJECT_COLUMNS
from tasks.core.split_leaks import assert_disjoint
from tasks.prepare import bcs_csv, cohorts, radiology_reports, splits
from tasks.prepare import rejects as accounting
from tasks.prepare.data_origin import data_origin
from tasks.prepare.manifest import build_manifest, typed_frame


@dataclass
class ReportTables:
    """The filtered report export: kept reports, per-study cohorts, rejects and counts (no text)."""

    kept: pd.DataFrame
    studies: pd.DataFrame
    rejects: pd.DataFrame
    counts: dict[str, Any]


@dataclass
class CohortTables:
    """Every volume with its cohort, the boxes, the label-level rejects and a summary part."""

    volumes: pd.DataFrame
    boxes: pd.DataFrame
    rejects: pd.DataFrame
    summary: dict[str, Any]


@dataclass
class ManifestTables:
    """The manifest, every reject with its reason, and ``cohort_summary.json``'s content."""

    manifest: pd.DataFrame
    rejects: pd.DataFrame
    summary: dict[str, Any]


def report_tables(reports: str, r: ReportsConfig) -> ReportTables:
    """DEDUCE-style filter of the report export and each study's derived cohort."""
    read = radiology_reports.load_reports(reports, encoding=r.encoding)
    result = radiology_reports.filter_reports(
        read.reports, radiology_type=r.radiology_type, pathology_type=r.pathology_type,
        radiology_terms=r.radiology_terms, pathology_terms=r.pathology_terms,
        start_date=r.start_date, end_date=r.end_date,
    )
    studies, unreadable = radiology_reports.study_cohorts(
        result.kept, radiology_type=r.radiology_type, pathology_type=r.pathology_type,
        window_days=r.pathology_window_days,
    )
    rejects = typed_frame(
        [{"kind": "report", **row}
         for row in pd.concat([read.rejects, result.rejects, unreadable]).to_dict("records")],
        REJECT_COLUMNS,
    )
    counts = dict(result.counts)
    counts["read"] = int(counts.get("read", 0)) + int(len(read.rejects))
    counts["encoding"] = read.encoding
    counts["undecodable_rows"] = int(len(read.rejects))
    counts["radiology_without_birads"] = int(len(unreadable))
    counts["studies_per_derived_cohort"] = {
        str(k): int(v) for k, v in studies["cohort"].value_counts().sort_index().items()
    }
    return ReportTables(result.kept, studies, rejects, counts)


def cohort_tables(data_root: str, report_studies: str | None, *, use_labels: bool) -> CohortTables:
    """Group volumes into cohorts from the labels CSV and/or the report-derived study cohorts.

    Raises:
        ValueError: Neither a labels CSV nor a report export to take cohorts from.
    """
    tables = bcs_csv.load_bcs_tables(data_root, require_labels=use_labels and report_studies is None)
    sources, label_rejects = [], tables.labels.iloc[0:0][["patient_id", "study_uid", "view"]].assign(reason="")
    if use_labels and len(tables.labels):
        from_labels, label_rejects = cohorts.cohorts_from_labels(tables.labels)
        sources.append(from_labels)
    if report_studies is not None:
        sources.append(cohorts.cohorts_from_reports(pd.read_parquet(report_studies), tables.file_paths))
    if not sources:
        raise ValueError(
            f"{data_root}: no cohort source: no labels CSV was used and no report export was given; "
            "pass --reports FILE or put the BCS-DBT labels CSVs in the data root"
        )
    combined, disagreements = cohorts.combine_cohorts(sources)
    volumes = cohorts.build_volume_table(tables.file_paths, combined, tables.boxes, cohort_rejects=label_rejects)
    if not (use_labels and len(tables.labels)):
        volumes = cohorts.no_report_reasons(volumes)
    summary = {
        "cohort_sources": [str(s["cohort_source"].iloc[0]) for s in sources if len(s)],
        "volumes": cohorts.volume_counts(volumes),
        "label_rejects": int(len(label_rejects)),
        "disagreements": disagreements,
    }
    no_path = volumes.loc[volumes["excluded_reason"].astype("object").eq("no-file-path").fillna(False),
                          cohorts.KEY]
    no_path = no_path.assign(reason="no-file-path: a labels row with no file-paths row (no image to use)")
    rejects = typed_frame(
        [{"kind": "label", **r} for r in [*label_rejects.to_dict("records"), *no_path.to_dict("records")]],
        REJECT_COLUMNS,
    )
    return CohortTables(volumes, tables.boxes, rejects, summary)


def merge_rejects(cohort_parts: list[str], *frames: pd.DataFrame) -> pd.DataFrame:
    """The earlier steps' reject tables (the ``.parquet`` parts) and ``frames``, in that order, typed."""
    earlier = [pd.read_parquet(p) for p in cohort_parts if p.endswith(".parquet")]
    parts = [frame for frame in (*earlier, *frames) if len(frame)]
    merged = pd.concat(parts, ignore_index=True) if parts else typed_frame([], REJECT_COLUMNS)
    return typed_frame(merged.to_dict("records"), REJECT_COLUMNS)


def merge_summary(cohort_parts: list[str], config: PrepareConfig, **fields: Any) -> dict[str, Any]:
    """The earlier steps' summaries (the ``.json`` parts), the slice settings, then ``fields``."""
    summary: dict[str, Any] = {}
    for part in cohort_parts:
        if part.endswith(".json"):
            summary.update(json.loads(Path(part).read_text()))
    summary.update({"strategy": config.slices.strategy, "image_size": config.slices.image_size,
                    "seed": config.slices.seed})
    summary.update(fields)
    return summary


def manifest_tables(plan: pd.DataFrame, split_table: pd.DataFrame, records: list[str], cohort_parts: list[str],
                    config: PrepareConfig, volumes: pd.DataFrame | None = None,
                    boxes: pd.DataFrame | None = None) -> ManifestTables:
    """The manifest, the rejects and the summary, with the leak audit and the volume accounting.

    Every volume of the file-paths CSVs (``volumes``) ends in the manifest or in the rejects
    with a reason, and boxes that do not fit their frame are rejected one by one (``boxes``).
    """
    box_rejects = pd.DataFrame(columns=list(REJECT_COLUMNS))
    if boxes is not None:
        plan, box_rejects = accounting.drop_boxes_outside_frames(plan, boxes, records)
    manifest, extraction_rejects = build_manifest(
        plan, split_table, records, out_dir=config.data.output_dir, lesion_window=config.slices.lesion_window
    )
    assert_disjoint(manifest)
    volume_rows = extraction_rejects.assign(reason=extraction_rejects["reason"].map(accounting.reject_reason))
    counts: dict[str, Any] = {}
    if volumes is not None:
        volume_rows, counts = accounting.account_volumes(
            volumes, plan, manifest, volume_rows, max_reject_fraction=config.data.max_reject_fraction,
        )
    rejects = merge_rejects(cohort_parts, volume_rows, typed_frame(box_rejects.to_dict("records"), REJECT_COLUMNS))
    s = config.slices
    summary = merge_summary(
        cohort_parts, config,
        normal_fraction=s.normal_fraction,
        lesion_window=s.lesion_window,
        split_fractions=list(s.split_fractions),
        planned_volumes=int(len(plan)),
        rejects={str(k): int(v) for k, v in rejects["kind"].value_counts().sort_index().items()},
        rejected_volumes=int(len(extraction_rejects)),
        boxes_outside_frame=int(len(box_rejects)),
        images=int(len(manifest)),
        images_per_split_label={
            f"{split}/{label}": int(n)
            for (split, label), n in manifest.groupby(["split", "label"]).size().sort_index().items()
        },
        audit=splits.split_audit(manifest),
        data_origin=data_origin(config.data.data_root),
        # Where the manifest's source_path values are relative to: evaluate's whole-volume level reads them there.
        data_root=str(Path(config.data.data_root).resolve()),
    )
    if counts:
        summary["accounting"] = counts
    return ManifestTables(manifest, rejects, summary)


def early_account(volumes: pd.DataFrame, plan: pd.DataFrame, config: PrepareConfig,
                  missing: pd.DataFrame | None = None) -> tuple[pd.DataFrame, dict[str, Any], str | None]:
    """The volume accounting before extraction: (reject rows, accounting, the limit's error or None).

    Every planned volume counts as used except those in ``missing`` (files not found, or
    outside the data root); the full account is made again by :func:`manifest_tables`.
    """
    missing = typed_frame([], REJECT_COLUMNS) if missing is None else missing
    used = plan
    if len(missing):
        gone = set(missing[cohorts.KEY].astype(str).itertuples(index=False, name=None))
        used = plan.loc[[k not in gone for k in plan[cohorts.KEY].astype(str).itertuples(index=False, name=None)]]
    rows, counts = accounting.account_volumes(volumes, plan, used, missing,
                                              max_reject_fraction=config.data.max_reject_fraction)
    return rows, counts, accounting.reject_fraction_error(counts, reasons=rows["reason"])
