"""The cheap existence check of every planned volume, before any extraction.

Resolving a CSV path costs a directory listing per folder (:class:`tasks.prepare.locate.VolumeResolver`
caches them), far less than extraction's per-volume work (a folder, a header read, a
record). When most of a plan's files are missing (a wrong ``--data-root``, a partial
download), the reject-fraction rule stops the run on this check alone.
"""

from __future__ import annotations

import os

import pandas as pd

from tasks.prepare.locate import VolumeResolver


def unresolved_volumes(plan: pd.DataFrame, data_root: str | os.PathLike[str],
                       extra_roots: tuple[str, ...] = ()) -> pd.DataFrame:
    """One extraction-style reject row per planned volume whose file cannot be found (or lies outside).

    Args:
        plan: The slice plan (``patient_id, study_uid, view, descriptive_path, classic_path``).
        data_root: The dataset root.
        extra_roots: ``--extra-data-root`` folders the CSVs' absolute paths may point into.

    Returns:
        Rows ``kind="volume", patient_id, study_uid, view, report_id, path, reason`` with a
        coded reason (``missing-file: ...`` or ``outside-data-root: ...``).
    """
    resolver = VolumeResolver(data_root, extra_roots=tuple(extra_roots))
    rows = []
    for job in plan.to_dict("records"):
        path, how = resolver.resolve(job.get("descriptive_path"), job.get("classic_path"),
                                     str(job["patient_id"]), study_uid=str(job["study_uid"]))
        if path is not None:
            continue
        reason = how if how.startswith("outside-data-root") else f"missing-file: {how}"
        rows.append({"kind": "volume", "patient_id": str(job["patient_id"]), "study_uid": str(job["study_uid"]),
                     "view": str(job["view"]), "report_id": None,
                     "path": job.get("descriptive_path") if isinstance(job.get("descriptive_path"), str) else None,
                     "reason": reason})
    return pd.DataFrame(rows, columns=["kind", "patient_id", "study_uid", "view", "report_id", "path", "reason"])
