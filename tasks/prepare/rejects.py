"""Account for every listed volume: used, or rejected with a reason, and the reject budget.

Every volume of the file-paths CSVs ends up either in the manifest or in ``rejects.parquet``
with one coded reason (``code: detail``); faults (every reason but
:data:`~tasks.core.schema.BY_DESIGN_REASONS`) count towards ``--max-reject-fraction``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from tasks.core.schema import BY_DESIGN_REASONS, VOLUME_KEY

logger = logging.getLogger("tasks.prepare.cohorts")  # the name the logs have always carried


KEY: list[str] = list(VOLUME_KEY)


def reject_reason(text: object) -> str:
    """An extraction record's reject text as ``code: detail`` (``missing-file``, ``unreadable``).

    The code before the colon is what :func:`account_volumes` counts by.
    """
    detail = str(text)
    if re.match(r"^[a-z]+(-[a-z]+)*(:|$)", detail):
        return detail  # already coded
    if detail.startswith("missing volume"):
        return "missing-file: " + detail.removeprefix("missing volume").lstrip(": ")
    return f"unreadable: {detail}"


def _has_boxes(row: object) -> bool:
    """Whether the boxes CSV has a box for this volume (``n_boxes`` of the volume table)."""
    n = getattr(row, "n_boxes", 0)
    return bool(n) and not pd.isna(n) and int(n) > 0


def reason_code(reason: object) -> str:
    """The code of a reject reason (the text before the first colon)."""
    return str(reason).split(":", 1)[0].strip()


def account_volumes(
    volumes: pd.DataFrame, plan: pd.DataFrame, manifest: pd.DataFrame, extraction_rejects: pd.DataFrame,
    *, max_reject_fraction: float,
) -> tuple[pd.DataFrame, dict[str, object]]:
    """Account for every volume of the file-paths CSVs: used, or rejected with a reason.

    A listed volume (one with a file-paths row) is *used* when it has at least one image in
    the manifest; otherwise it gets one ``kind="volume"`` reject row whose reason is, in
    order: its exclusion reason from the volume table (``no-label``, ``no-flag``,
    ``actionable``), its extraction reject (``missing-file: ...``, ``unreadable: ...``),
    ``no-frames`` (planned, but no frame written), ``no-box`` (a tumour volume the strategy
    needs a box for, and the boxes CSV has none) or ``not-selected`` (the strategy did not
    pick it, e.g. a patient's other views, boxed or not, under single-slice).

    Args:
        volumes: :func:`build_volume_table`'s table.
        plan: The slice plan that was extracted.
        manifest: The manifest built from it.
        extraction_rejects: ``kind="volume"`` rejects from the extraction records (reasons
            coded by :func:`reject_reason`).
        max_reject_fraction: The allowed share of faults, recorded in the accounting.

    Returns:
        ``(rejects, accounting)``: the volume reject rows (the extraction rejects'
        columns) and a JSON-able dict with ``listed = used + rejected``, the rejects by
        reason, the ``faults`` (rejects not in :data:`BY_DESIGN_REASONS`), their
        ``fault_fraction`` and ``max_reject_fraction``.
    """
    def keys(frame: pd.DataFrame) -> set[tuple[str, str, str]]:
        return set(frame[KEY].astype(str).itertuples(index=False, name=None)) if len(frame) else set()

    listed = volumes.loc[volumes["excluded_reason"].astype("object").ne("no-file-path").fillna(True)]
    used, planned = keys(manifest), keys(plan)
    extracted = {tuple(str(v) for v in k): (str(r), p) for k, r, p in zip(
        extraction_rejects[KEY].itertuples(index=False, name=None), extraction_rejects["reason"],
        extraction_rejects["path"])}
    rows: list[dict[str, object]] = []
    for row in listed.itertuples(index=False):
        key = (str(row.patient_id), str(row.study_uid), str(row.view))
        if key in used:
            continue
        path = row.descriptive_path if isinstance(row.descriptive_path, str) else None
        if isinstance(row.excluded_reason, str):
            reason = row.excluded_reason
        elif key in extracted:
            found = extracted[key][1]  # may be <NA> (a row with no descriptive path)
            reason, path = extracted[key][0], found if isinstance(found, str) and found else path
        elif key in planned:
            reason = "no-frames: the plan selected no frame of this volume that could be written"
        elif row.label == 1 and not _has_boxes(row):
            # A boxed view the strategy did not pick (single-slice keeps one image per
            # patient) is a choice, not a missing box.
            reason = "no-box: the strategy needs the lesion's box and the boxes CSV has none for this volume"
        else:
            reason = "not-selected"
        rows.append({"kind": "volume", "patient_id": key[0], "study_uid": key[1], "view": key[2],
                     "report_id": None, "path": path, "reason": reason})
    rejects = pd.DataFrame(rows, columns=list(extraction_rejects.columns))
    by_reason: dict[str, int] = {}
    for reason in rejects["reason"]:
        code = reason_code(reason)
        by_reason[code] = by_reason.get(code, 0) + 1
    faults = sum(n for code, n in by_reason.items() if code not in BY_DESIGN_REASONS)
    n_listed = int(len(listed))
    accounting: dict[str, object] = {
        "listed": n_listed,
        "used": int(len(used & keys(listed))),
        "rejected": int(len(rejects)),
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "faults": int(faults),
        "fault_fraction": round(faults / n_listed, 6) if n_listed else 0.0,
        "max_reject_fraction": float(max_reject_fraction),
    }
    accounting["reconciled"] = accounting["listed"] == accounting["used"] + accounting["rejected"]
    return rejects, accounting


def reject_fraction_error(accounting: dict[str, object], *, option: str = "--max-reject-fraction",
                          reasons: Iterable[str] = ()) -> str | None:
    """The message that stops a run whose faults exceed the allowed share, or None.

    ``reasons`` (the rejects' reasons): when volumes lie outside the data root, the message
    ends with the first one (its path, the root and the two ways out) instead of advising
    ``option``, which would drop them.
    """
    listed = int(accounting.get("listed", 0) or 0)
    faults = int(accounting.get("faults", 0) or 0)
    allowed = float(accounting.get("max_reject_fraction", 1.0))
    if not listed or faults / listed <= allowed:
        return None
    by_reason = dict(accounting.get("rejected_by_reason", {}))
    counts = ", ".join(f"{code}: {n}" for code, n in by_reason.items() if code not in BY_DESIGN_REASONS)
    if by_reason.get("outside-data-root"):
        example = next((r for r in reasons if reason_code(r) == "outside-data-root"), None)
        return (
            f"{faults} of {listed} volumes listed in the file-paths CSVs ({faults / listed:.1%}) were rejected "
            f"({counts}); each is in rejects.parquet with its reason. Raising {option} would drop them: "
            + (example or "outside-data-root: paths lie outside --data-root; put a symlink to the collection "
               "inside the data root, or pass --extra-data-root DIR")
        )
    return (
        f"{faults} of {listed} volumes listed in the file-paths CSVs ({faults / listed:.1%}) were rejected, "
        f"more than the allowed {allowed:.1%} ({counts}); each is in rejects.parquet with its reason. "
        f"Fix the inputs (labels CSV, image folders), or accept this with {option} "
        f"{min(1.0, (faults / listed) + 0.005):.2f} (max_reject_fraction in the configuration)"
    )


def drop_boxes_outside_frames(
    plan: pd.DataFrame, boxes: pd.DataFrame, records: Iterable[str | os.PathLike[str]],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reject the boxes that do not fit inside their volume's frames, one reject per box.

    The boxes CSV gives no frame size, so this runs once the extraction records know each
    file's rows and columns. A box outside the frame would otherwise be mapped onto the
    image's padding and counted, for example, in the Grad-CAM localisation score.

    Args:
        plan: The slice plan (its ``boxes`` JSON per volume).
        boxes: :attr:`BcsTables.boxes` (with ``csv_file`` and ``csv_line`` naming each row).
        records: The extraction records (``volume.json``; ``rows``, ``columns``).

    Returns:
        ``(plan, rejects)``: the plan without those boxes (``n_boxes`` updated) and one
        ``kind="box"`` reject per box naming the CSV file and line.
    """
    import json

    size: dict[tuple[str, str, str], tuple[int, int]] = {}
    for path in records:
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if record.get("rows") and record.get("columns"):
            size[(str(record["patient_id"]), str(record["study_uid"]), str(record["view"]))] = (
                int(record["rows"]), int(record["columns"]))
    rejects: list[dict[str, object]] = []
    bad: dict[tuple[str, str, str], set[tuple[int, int, int, int, int]]] = {}
    for row in boxes.itertuples(index=False):
        key = (str(row.patient_id), str(row.study_uid), str(row.view))
        if key not in size:
            continue
        rows_, columns = size[key]
        x, y, w, h = (int(v) for v in (row.x, row.y, row.width, row.height))
        if x + w <= columns and y + h <= rows_ and w > 0 and h > 0:
            continue
        where = f"{getattr(row, 'csv_file', 'boxes CSV')} line {getattr(row, 'csv_line', '?')}"
        rejects.append({
            "kind": "box", "patient_id": key[0], "study_uid": key[1], "view": key[2], "report_id": None,
            "path": str(getattr(row, "csv_file", "")) or None,
            "reason": (f"box-outside-frame: {where} ({'/'.join(key)}): X={x} Y={y} Width={w} Height={h} "
                       f"does not fit the file's {columns} x {rows_} (columns x rows) frame; fix the row"),
        })
        bad.setdefault(key, set()).add((int(row.slice), x, y, w, h))
    if not bad:
        return plan, pd.DataFrame(rejects, columns=["kind", *KEY, "report_id", "path", "reason"])
    logger.warning("%d boxes lie outside their frame and are rejected (see rejects.parquet)", len(rejects))
    plan = plan.copy()
    kept_json, counts = [], []
    for key, text in zip(plan[KEY].astype(str).itertuples(index=False, name=None), plan["boxes"]):
        listed = json.loads(text) if isinstance(text, str) and text else []
        if key in bad:
            listed = [b for b in listed if (int(b["slice"]), int(b["x"]), int(b["y"]), int(b["width"]),
                                            int(b["height"])) not in bad[key]]
        kept_json.append(json.dumps(listed, sort_keys=True, separators=(",", ":")))
        counts.append(len(listed))
    plan["boxes"] = pd.Series(kept_json, index=plan.index, dtype="str")
    plan["n_boxes"] = pd.Series(counts, index=plan.index, dtype="int64")
    return plan, pd.DataFrame(rejects, columns=["kind", *KEY, "report_id", "path", "reason"])
