"""Prefect tasks of the ``prepare-data`` flow: thin wrappers around the plain functions of each stage.

Tasks hand each other paths to files they wrote, never DataFrames of images. Cached
tasks are keyed on the content of their input files (``tasks.infra.caching``); retries sit on
the tasks that touch disk, and only transient errors are retried (``tasks.infra.retry``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from tasks.prepare import rejects as accounting_mod
from tasks.prepare import bcs_csv
from tasks.prepare import cohorts as cohorts_mod
from tasks.prepare import radiology_reports as reports_mod
from tasks.prepare import slices as slices_mod
from tasks.prepare import splits as splits_mod
from tasks.prepare.data_origin import data_origin
from tasks.infra.caching import content_cache_key_fn, step_dir
from tasks.core.config import PrepareConfig
from tasks.infra import lifecycle
from tasks.prepare.extract import extract_shard
from tasks.core.files import atomic_write, atomic_write_json, atomic_write_parquet
from tasks.core.schema import REJECT_COLUMNS
from tasks.prepare.manifest import build_manifest, typed_frame
from tasks.infra.retry import retry_policy

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

#: The published outputs of prepare-data, by result key.
PUBLISHED = {"manifest": "manifest.parquet", "rejects": "rejects.parquet", "summary": "cohort_summary.json",
             "kept": "reports_filtered.parquet"}


def _cache_key_fn(step: str):  # noqa: ANN202 - Prefect's cache_key_fn signature
    return content_cache_key_fn(files=_FILES[step])


def _dir(step: str, config: PrepareConfig, **parameters: Any) -> Path:
    """The keyed folder of ``step`` for these parameters (see :func:`tasks.infra.caching.step_dir`)."""
    return step_dir(step, {**parameters, "config": config}, out_dir=config.data.output_dir, files=_FILES[step])


@task(name="filter-reports", cache_key_fn=_cache_key_fn("filter-reports"), **_CACHED)
def filter_reports(reports: str, config: PrepareConfig) -> dict[str, str]:
    """DEDUCE-style filter of the report export; derive each study's cohort (no text kept)."""
    r = config.reports
    work = _dir("filter-reports", config, reports=reports)
    read = reports_mod.load_reports(reports, encoding=r.encoding)
    result = reports_mod.filter_reports(
        read.reports, radiology_type=r.radiology_type, pathology_type=r.pathology_type,
        radiology_terms=r.radiology_terms, pathology_terms=r.pathology_terms,
        start_date=r.start_date, end_date=r.end_date,
    )
    studies, unreadable = reports_mod.study_cohorts(
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
    return {
        "kept": str(atomic_write_parquet(work / "reports_filtered.parquet", result.kept)),
        "studies": str(atomic_write_parquet(work / "report_studies.parquet", studies)),
        "rejects": str(atomic_write_parquet(work / "report_rejects.parquet", rejects)),
        "summary": str(atomic_write_json(work / "reports_summary.json", {"reports": counts})),
    }


@task(name="group-cohorts", cache_key_fn=_cache_key_fn("group-cohorts"), **_CACHED)
def group_cohorts(csv_files: list[str], data_root: str, report_studies: str | None,
                  config: PrepareConfig) -> dict[str, str]:
    """Group volumes into cohorts from the labels CSV and/or report-derived study cohorts."""
    use_labels = config.data.use_labels
    tables = bcs_csv.load_bcs_tables(data_root, require_labels=use_labels and report_studies is None)
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
    if not (use_labels and len(tables.labels)):
        volumes = cohorts_mod.no_report_reasons(volumes)
    work = _dir("group-cohorts", config, csv_files=csv_files, data_root=data_root,
                report_studies=report_studies)
    summary = {
        "cohort_sources": [str(s["cohort_source"].iloc[0]) for s in sources if len(s)],
        "volumes": cohorts_mod.volume_counts(volumes),
        "label_rejects": int(len(label_rejects)),
        "disagreements": disagreements,
    }
    no_path = volumes.loc[volumes["excluded_reason"].astype("object").eq("no-file-path").fillna(False),
                          cohorts_mod.KEY]
    no_path = no_path.assign(reason="no-file-path: a labels row with no file-paths row (no image to use)")
    rejects = typed_frame(
        [{"kind": "label", **r} for r in [*label_rejects.to_dict("records"), *no_path.to_dict("records")]],
        REJECT_COLUMNS,
    )
    return {
        "volumes": str(atomic_write_parquet(work / "volumes.parquet", volumes)),
        "boxes": str(atomic_write_parquet(work / "boxes.parquet", tables.boxes)),
        "rejects": str(atomic_write_parquet(work / "cohort_rejects.parquet", rejects)),
        "summary": str(atomic_write_json(work / "cohort_summary.part.json", summary)),
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
    return splits_mod.check_split_classes(
        pd.read_parquet(plan), pd.read_parquet(splits), fractions=config.slices.split_fractions
    )


@task(name="extract-shard", **retry_policy(retries=2, delay_seconds=1))
def extract_shard_task(jobs: list[dict[str, Any]], data_root: str, out_dir: str, image_size: int, seed: int,
                       full_resolution: bool = False) -> dict[str, Any]:
    """Decode and write one shard of volumes (records make reruns skip finished volumes)."""
    return extract_shard(jobs, data_root=data_root, out_dir=out_dir, image_size=image_size, seed=seed,
                         full_resolution=full_resolution)


@task(name="write-manifest", cache_key_fn=_cache_key_fn("write-manifest"), **_CACHED)
def write_manifest(plan: str, splits: str, records: list[str], cohort_parts: list[str], config: PrepareConfig,
                   volumes: str | None = None, boxes: str | None = None) -> dict[str, Any]:
    """Write the manifest, the rejects and the summary (with the leak audit and the accounting).

    The files go into this step's keyed folder; :func:`publish_outputs` copies them to
    ``manifest.parquet``, ``rejects.parquet`` and ``cohort_summary.json``. Every volume of
    the file-paths CSVs (``volumes``) ends in the manifest or in the rejects with a reason,
    and boxes that do not fit their frame are rejected one by one (``boxes``).
    """
    work = _dir("write-manifest", config, plan=plan, splits=splits, records=records, cohort_parts=cohort_parts,
                volumes=volumes, boxes=boxes)
    plan_df, splits_df = pd.read_parquet(plan), pd.read_parquet(splits)
    box_rejects = pd.DataFrame(columns=list(REJECT_COLUMNS))
    if boxes is not None:
        plan_df, box_rejects = accounting_mod.drop_boxes_outside_frames(plan_df, pd.read_parquet(boxes), records)
    manifest, extraction_rejects = build_manifest(
        plan_df, splits_df, records, out_dir=config.data.output_dir, lesion_window=config.slices.lesion_window
    )
    splits_mod.assert_disjoint(manifest)
    earlier = [pd.read_parquet(p) for p in cohort_parts if p.endswith(".parquet")]
    accounting = {}
    volume_rows = extraction_rejects.assign(reason=extraction_rejects["reason"].map(accounting_mod.reject_reason))
    if volumes is not None:
        volume_rows, accounting = accounting_mod.account_volumes(
            pd.read_parquet(volumes), plan_df, manifest, volume_rows,
            max_reject_fraction=config.data.max_reject_fraction,
        )
    parts = [frame for frame in (*earlier, volume_rows, typed_frame(box_rejects.to_dict("records"), REJECT_COLUMNS))
             if len(frame)]
    rejects = (pd.concat(parts, ignore_index=True) if parts else typed_frame([], REJECT_COLUMNS))
    rejects = typed_frame(rejects.to_dict("records"), REJECT_COLUMNS)
    summary: dict[str, Any] = {}
    for part in cohort_parts:
        if part.endswith(".json"):
            summary.update(json.loads(Path(part).read_text()))
    summary.update({
        "strategy": config.slices.strategy,
        "image_size": config.slices.image_size,
        "seed": config.slices.seed,
        "normal_fraction": config.slices.normal_fraction,
        "lesion_window": config.slices.lesion_window,
        "split_fractions": list(config.slices.split_fractions),
        "planned_volumes": int(len(plan_df)),
        "rejects": {str(k): int(v) for k, v in rejects["kind"].value_counts().sort_index().items()},
        "rejected_volumes": int(len(extraction_rejects)),
        "boxes_outside_frame": int(len(box_rejects)),
        "images": int(len(manifest)),
        "images_per_split_label": {
            f"{s}/{lab}": int(n)
            for (s, lab), n in manifest.groupby(["split", "label"]).size().sort_index().items()
        },
        "audit": splits_mod.split_audit(manifest),
        "data_origin": data_origin(config.data.data_root),
    })
    if accounting:
        summary["accounting"] = accounting
    return {
        "manifest": str(atomic_write_parquet(work / "manifest.parquet", manifest)),
        "rejects": str(atomic_write_parquet(work / "rejects.parquet", rejects)),
        "summary": str(atomic_write_json(work / "cohort_summary.json", summary)),
    }


def _copy(source: str | Path, target: Path) -> Path:
    import shutil

    return atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def publish_outputs(result: dict[str, Any], out_dir: str, *, kept: str | None = None) -> dict[str, str]:
    """Copy a run's keyed outputs to the names users and later flows read.

    ``cohort_summary.json`` is removed first and written last, so whenever it exists it
    describes the manifest beside it, even if this is interrupted half way; a stale
    ``reports_filtered.parquet`` from a run with reports is removed by a run without.
    Runs into one folder take its lock (:func:`tasks.core.files.output_lock`), so two never
    publish at once.

    Args:
        result: :func:`write_manifest`'s result (paths in its keyed folder); without a
            ``manifest`` (a run stopped by the reject check) an old manifest is removed.
        out_dir: The run's output folder.
        kept: The kept reports (``filter-reports``' ``kept``), or None.
    """
    import filecmp

    out = Path(out_dir)
    sources = {key: result.get(key) for key in ("manifest", "rejects", "summary")}
    sources["kept"] = kept
    targets = {key: out / name for key, name in PUBLISHED.items()}

    def same(key: str) -> bool:
        source, target = sources[key], targets[key]
        if not source:
            return not target.exists()
        return target.is_file() and filecmp.cmp(source, target, shallow=False)

    if not all(same(key) for key in sources):
        # Untouched when nothing changed, so a rerun leaves the published files (and their
        # times) as they were; otherwise the summary goes first and comes back last.
        targets["summary"].unlink(missing_ok=True)
        for key in ("manifest", "rejects", "kept", "summary"):
            if sources[key]:
                _copy(sources[key], targets[key])
            else:
                targets[key].unlink(missing_ok=True)
    return {key: str(targets[key]) for key in sources if sources[key]}


def check_label_rejects(volumes: str, plan: str, cohort_parts: list[str], config: PrepareConfig,
                        kept: str | None = None, *, check_files: bool = False) -> dict[str, Any]:
    """Stop before extraction when faults known already (no label, no flag) exceed the limit.

    With ``check_files``, the planned volumes whose file cannot be found (or lies outside
    the data root) count too: a directory listing per folder, so 20,000 missing files stop
    the run before a folder or a record is written for any of them. Every other planned
    volume counts as used here (extraction has not run); the full account is made again by
    :func:`write_manifest`. On failure ``rejects.parquet`` and ``cohort_summary.json`` are
    published (no manifest) so the user can see what was rejected and why.

    Raises:
        ValueError: The faults exceed ``config.data.max_reject_fraction`` (counts by reason).
    """
    from tasks.prepare.volume_check import unresolved_volumes

    plan_df = pd.read_parquet(plan)
    missing = typed_frame([], REJECT_COLUMNS)
    used = plan_df
    if check_files and len(plan_df):
        missing = typed_frame(unresolved_volumes(plan_df, config.data.data_root).to_dict("records"), REJECT_COLUMNS)
        gone = set(missing[cohorts_mod.KEY].astype(str).itertuples(index=False, name=None))
        keep = [k not in gone for k in plan_df[cohorts_mod.KEY].astype(str).itertuples(index=False, name=None)]
        used = plan_df.loc[keep]
    rows, accounting = accounting_mod.account_volumes(
        pd.read_parquet(volumes), plan_df, used, missing, max_reject_fraction=config.data.max_reject_fraction)
    error = accounting_mod.reject_fraction_error(accounting)
    if error is None:
        return accounting
    earlier = [pd.read_parquet(p) for p in cohort_parts if p.endswith(".parquet")]
    frames = [f for f in (*earlier, rows) if len(f)]
    rejects = typed_frame(pd.concat(frames, ignore_index=True).to_dict("records") if frames else [],
                          REJECT_COLUMNS)
    summary: dict[str, Any] = {}
    for part in cohort_parts:
        if part.endswith(".json"):
            summary.update(json.loads(Path(part).read_text()))
    summary.update({"strategy": config.slices.strategy, "image_size": config.slices.image_size,
                    "seed": config.slices.seed, "accounting": accounting, "failed": error, "images": 0})
    work = Path(plan).parent / ("file-check" if check_files else "label-check")
    publish_outputs({"rejects": str(atomic_write_parquet(work / "rejects.parquet", rejects)),
                     "summary": str(atomic_write_json(work / "cohort_summary.json", summary))},
                    config.data.output_dir, kept=kept)
    raise ValueError(error)


def fail_on_rejects(result: dict[str, Any], config: PrepareConfig, kept: str | None) -> None:
    """Publish the rejects and the summary without a manifest, and stop, if too much was rejected."""
    summary = json.loads(Path(result["summary"]).read_text())
    error = accounting_mod.reject_fraction_error(summary.get("accounting", {}))
    if error is None:
        return
    publish_outputs({"rejects": result["rejects"], "summary": result["summary"]},
                          config.data.output_dir, kept=kept)
    raise ValueError(error)


def cohort_csv_files(config: PrepareConfig, reports: dict[str, str] | None) -> list[str]:
    """The BCS-DBT CSVs under the data root (found by name), sorted: group-cohorts' inputs and cache key."""
    csvs = bcs_csv.find_bcs_csvs(config.data.data_root,
                                     require_labels=config.data.use_labels and reports is None)
    return sorted(str(p) for paths in csvs.values() for p in paths)


def extraction_jobs(plan: str) -> list[dict[str, Any]]:
    """One job per planned volume: its key, where it is on disk and which frames to extract."""
    return pd.read_parquet(plan)[["patient_id", "study_uid", "view", "descriptive_path",
                                  "classic_path", "frames_rule"]].to_dict("records")


def publish_cohort_table(manifest_path: str) -> None:
    """The ``cohort-flow`` artifact (images and patients per split and cohort) and a log line."""
    manifest = pd.read_parquet(manifest_path)
    table = (manifest.groupby(["split", "cohort"]).agg(images=("image_path", "size"),
                                                        patients=("patient_id", "nunique"))
             .reset_index().to_dict("records"))
    create_table_artifact(table, key="cohort-flow", description="Images and patients per split and cohort")
    get_run_logger().info("manifest: %d images -> %s", len(manifest), manifest_path)


def interrupted(exc: BaseException, out: Path) -> str:
    """Stop the workers and remove partial files after SIGTERM or Ctrl-C; the Cancelled state's message."""
    return lifecycle.interrupted(exc, out, flow="prepare-data")
