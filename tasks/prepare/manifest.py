"""The manifest: one row per image, with its label, split and lineage, plus the rejects table."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from tasks.reader.geometry import box_to_image
from tasks.core.schema import MANIFEST_COLUMNS, REJECT_COLUMNS, VOLUME_KEY
from tasks.prepare.slices import box_records, frame_boxes

_KEY = list(VOLUME_KEY)


def _pick_box(boxes: list[dict[str, Any]], frame: int, lesion_window: int) -> dict[str, Any] | None:
    applying = frame_boxes(boxes, frame, lesion_window)
    if not applying:
        return None
    # The lesion centred nearest this frame; ties go to the larger box.
    return min(applying, key=lambda b: (abs(int(b["slice"]) - frame), -float(b["width"]) * float(b["height"])))


def typed_frame(rows: list[dict[str, Any]], columns: dict[str, str]) -> pd.DataFrame:
    """A DataFrame with exactly ``columns`` in that order and dtype (missing ones are null)."""
    frame = pd.DataFrame(rows, columns=list(columns))
    for name, dtype in columns.items():
        frame[name] = frame[name].astype(dtype)
    return frame


def duplicate_content(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], str]:
    """``{volume key: duplicate-content reason}`` for files whose bytes are listed under two patients.

    The same DICOM under a normal and a cancer patient would land in two splits with opposite
    labels, a leak no id check sees: every such volume is rejected (a fault), naming both
    patients and paths.
    """
    by_sha: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record.get("source_sha256") and not record.get("reject"):
            by_sha.setdefault(str(record["source_sha256"]), []).append(record)
    found: dict[tuple[str, str, str], str] = {}
    for sha, group in by_sha.items():
        if len({str(r["patient_id"]) for r in group}) < 2:
            continue
        listing = "; ".join(f"patient {r['patient_id']} ({r.get('source_path')})" for r in group)
        for r in group:
            found[(r["patient_id"], r["study_uid"], r["view"])] = (
                f"duplicate-content: the same DICOM bytes (sha256 {sha[:12]}) are listed under {listing}; "
                "a copy under two patients would leak across splits: fix the file-paths CSV")
    return found


def build_manifest(
    plan: pd.DataFrame,
    splits: pd.DataFrame,
    records: Iterable[str | os.PathLike[str]],
    *,
    out_dir: str | os.PathLike[str],
    lesion_window: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Join the slice plan, the patient splits and the extraction records.

    Returns:
        ``(manifest, rejects)``: the manifest sorted by patient, study, view and slice; the
        volumes that could not be read, with the reason.
    """
    out = Path(out_dir)
    plan_by_key = {tuple(str(v) for v in k): row for k, row in plan.set_index(_KEY).iterrows()}
    split_of = dict(zip(splits["patient_id"].astype(str), splits["split"].astype(str)))
    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    loaded = [(Path(p), json.loads(Path(p).read_text())) for p in records]
    loaded = [(p, r) for p, r in loaded if (r["patient_id"], r["study_uid"], r["view"]) in plan_by_key]
    duplicated = duplicate_content([r for _, r in loaded])
    for record_path, record in loaded:
        key = (record["patient_id"], record["study_uid"], record["view"])
        planned = plan_by_key[key]  # records from an earlier plan (another strategy) were left out
        reject = record.get("reject") or duplicated.get(key)
        if reject:
            rejects.append({"kind": "volume", **dict(zip(_KEY, key)), "path": record.get("source_path"),
                            "reason": reject})
            continue
        boxes = box_records(planned.get("boxes"))
        rel_dir = record_path.parent.relative_to(out).as_posix()
        for fr in record["frames"]:
            box = _pick_box(boxes, int(fr["slice_index"]), lesion_window)
            mapped = (box_to_image(float(box["x"]), float(box["y"]), float(box["width"]), float(box["height"]),
                                   scale=fr["scale"], pad_x=fr["pad_x"], pad_y=fr["pad_y"])
                      if box else (np.nan,) * 4)
            rows.append({
                **dict(zip(_KEY, key)),
                "slice_index": fr["slice_index"],
                "label": int(planned["label"]),
                "cohort": planned["cohort"],
                "split": split_of.get(key[0]),
                "image_path": f"{rel_dir}/{fr['file']}",
                "source_path": record["source_path"],
                "n_frames": record["n_frames"],
                "window_center": fr["window_center"],
                "window_width": fr["window_width"],
                "window_source": fr["window_source"],
                "rotated": fr["rotated"],
                "scale": fr["scale"],
                "pad_x": fr["pad_x"],
                "pad_y": fr["pad_y"],
                "box_x": mapped[0], "box_y": mapped[1], "box_width": mapped[2], "box_height": mapped[3],
                "box_slice": int(box["slice"]) if box else None,
                "box_class": str(box["box_class"]) if box else None,
                "augmented_from": None,
                # Records written before reduced decoding existed decoded every frame in full.
                "decode_level": int(fr.get("decode_level", 0)),
                "decode_note": fr.get("decode_note"),
                "source_sha256": record.get("source_sha256"),
            })
    manifest = typed_frame(rows, MANIFEST_COLUMNS)
    missing_split = manifest["split"].isna()
    if missing_split.any():
        raise ValueError(
            f"{int(missing_split.sum())} manifest rows have a patient without a split "
            f"(first: {manifest.loc[missing_split, 'patient_id'].iloc[0]}); the plan and the splits disagree"
        )
    manifest = manifest.sort_values(_KEY + ["slice_index"], kind="stable").reset_index(drop=True)
    rejects_df = typed_frame(rejects, REJECT_COLUMNS).sort_values(_KEY, kind="stable").reset_index(drop=True)
    return manifest, rejects_df
