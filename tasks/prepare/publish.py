"""What prepare-data publishes: the keyed outputs copied to the names users read, and the reject checks.

:func:`publish_outputs` copies a run's keyed files (``tasks.infra.caching.step_dir``) to
``manifest.parquet``, ``rejects.parquet``, ``cohort_summary.json`` and
``reports_filtered.parquet``; :func:`check_label_rejects` and :func:`fail_on_rejects` stop
a run that rejects too much, publishing the rejects and the summary (no manifest) first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.core.config import PrepareConfig
from tasks.core.files import atomic_write, atomic_write_json, atomic_write_parquet
from tasks.core.schema import REJECT_COLUMNS
from tasks.prepare import outputs
from tasks.prepare.manifest import typed_frame
from tasks.prepare.rejects import reject_fraction_error

#: The published outputs of prepare-data, by result key.
PUBLISHED = {"manifest": "manifest.parquet", "rejects": "rejects.parquet", "summary": "cohort_summary.json",
             "kept": "reports_filtered.parquet"}


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
        result: :func:`tasks.prepare.steps.write_manifest`'s result (paths in its keyed folder);
            without a ``manifest`` (a run stopped by the reject check) an old manifest is removed.
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
    :func:`tasks.prepare.steps.write_manifest`. On failure ``rejects.parquet`` and
    ``cohort_summary.json`` are published (no manifest) so the user can see what was rejected and why.

    Raises:
        ValueError: The faults exceed ``config.data.max_reject_fraction`` (counts by reason).
    """
    from tasks.prepare.volume_check import unresolved_volumes

    plan_df = pd.read_parquet(plan)
    missing = None
    if check_files and len(plan_df):
        unresolved = unresolved_volumes(plan_df, config.data.data_root, config.data.extra_data_roots)
        missing = typed_frame(unresolved.to_dict("records"), REJECT_COLUMNS)
    rows, accounting, error = outputs.early_account(pd.read_parquet(volumes), plan_df, config, missing)
    if error is None:
        return accounting
    work = Path(plan).parent / ("file-check" if check_files else "label-check")
    rejects = outputs.merge_rejects(cohort_parts, rows)
    summary = outputs.merge_summary(cohort_parts, config, accounting=accounting, failed=error, images=0)
    publish_outputs({"rejects": str(atomic_write_parquet(work / "rejects.parquet", rejects)),
                     "summary": str(atomic_write_json(work / "cohort_summary.json", summary))},
                    config.data.output_dir, kept=kept)
    raise ValueError(error)


def fail_on_rejects(result: dict[str, Any], config: PrepareConfig, kept: str | None) -> None:
    """Publish the rejects and the summary without a manifest, and stop, if too much was rejected."""
    summary = json.loads(Path(result["summary"]).read_text())
    error = reject_fraction_error(summary.get("accounting", {}),
                                  reasons=pd.read_parquet(result["rejects"])["reason"])
    if error is None:
        return
    publish_outputs({"rejects": result["rejects"], "summary": result["summary"]},
                    config.data.output_dir, kept=kept)
    raise ValueError(error)
