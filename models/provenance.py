"""What a model was trained on, recorded in its checkpoint, and the audit of evaluated data against it.

A checkpoint's ``training_data`` entry (:func:`training_data_record`) holds the training
manifest's content fingerprint and, for the training and validation splits, the sets of
patients, studies and images the model saw:

* patients and studies as :func:`hash_id` digests (a salted SHA-256 of the manifest's
  pseudonymous id), so the checkpoint holds nothing a reader could look up, yet an
  evaluated id can be checked against them;
* images as :func:`pixel_hash` digests of the decoded 8-bit pixels, so an evaluated image
  that is one of the training images is found even when another export renamed its
  patient and study ids (it matches when the two collections were prepared at the same
  image size, which is how a copied or re-exported collection is usually prepared).

:func:`audit_overlap` compares evaluated rows with such a record: ``tomoflow evaluate``
stops when the evaluated data holds training or validation patients (unless told to
allow it) and the report's leak audit shows the counts.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "TRAINED_SPLITS",
    "TrainingOverlapError",
    "audit_overlap",
    "hash_id",
    "overlap_message",
    "pixel_hash",
    "training_data_record",
]

#: The splits a model learns from (training) or is selected on (validation, early stopping).
TRAINED_SPLITS = ("train", "validation")
_ID_SALT = b"tomoflow-id/1:"


class TrainingOverlapError(ValueError):
    """The evaluated data holds patients, studies or images the model trained or was selected on."""


def hash_id(value: Any) -> str:
    """A 16-hex digest of a pseudonymous id (patient or study), for checkpoints and audits."""
    return hashlib.sha256(_ID_SALT + str(value).encode("utf-8")).hexdigest()[:16]


def pixel_hash(path: str | os.PathLike[str]) -> str:
    """A 16-hex digest of an image's decoded pixels and shape (not of the file's bytes).

    Two PNGs holding the same pixels hash alike whatever their names, metadata or encoder.
    """
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"))
    h = hashlib.sha256(f"{pixels.shape}".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()[:16]


def _original_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows that are not offline-augmented copies (their pixels are not in any collection)."""
    if "augmented_from" in frame.columns:
        return frame[frame["augmented_from"].isna()]
    return frame


def _split_sets(rows: pd.DataFrame, root: Path) -> dict[str, list[str]]:
    studies = rows["study_uid"] if "study_uid" in rows.columns else pd.Series([], dtype=object)
    return {
        "patients": sorted({hash_id(p) for p in rows["patient_id"].dropna()}),
        "studies": sorted({hash_id(s) for s in studies.dropna()}),
        "images": sorted({pixel_hash(root / p) for p in rows["image_path"].dropna()}),
    }


def training_data_record(frame: pd.DataFrame, *, root: str | os.PathLike[str], fingerprint: str) -> dict[str, Any]:
    """The checkpoint's ``training_data`` entry for a training manifest.

    Args:
        frame: The training manifest (``patient_id``, ``study_uid``, ``split``, ``image_path``).
        root: Folder its ``image_path`` values are relative to.
        fingerprint: The manifest's content fingerprint (:func:`tasks.core.files.file_fingerprint`).

    Returns:
        ``{"manifest_fingerprint", "id_hash": "sha256-16/salted", "splits": {split: {"patients",
        "studies", "images"}}}`` for the training and validation splits; lists of digests only.
    """
    rows = _original_rows(frame)
    return {
        "manifest_fingerprint": fingerprint,
        "id_hash": "sha256-16/salted",
        "splits": {split: _split_sets(rows[rows["split"].eq(split).fillna(False).astype(bool)], Path(root))
                   for split in TRAINED_SPLITS},
    }


def audit_overlap(record: Mapping[str, Any] | None, rows: pd.DataFrame, *, root: str | os.PathLike[str],
                  manifest_fingerprint: str | None = None, pixels: bool = True) -> dict[str, Any]:
    """Compare evaluated rows with a checkpoint's ``training_data``.

    Args:
        record: The checkpoint's ``training_data`` (``None`` for a checkpoint written before it
            was recorded: the audit then says it could not check).
        rows: The evaluated manifest rows.
        root: Folder their ``image_path`` values are relative to.
        manifest_fingerprint: The evaluated manifest's content fingerprint.
        pixels: Also compare pixel hashes (reads every evaluated image).

    Returns:
        ``checked``; ``evaluated`` (patients, studies, images); ``overlap_patients``,
        ``overlap_studies``, ``overlap_images`` (evaluated ones found in training or validation),
        ``overlap_rows`` (evaluated rows of an overlapping patient, study or image), ``by_split``
        (the same per trained split), and ``same_manifest`` (the evaluated manifest is the one
        the model trained on).
    """
    rows = _original_rows(rows)
    evaluated = {
        "patients": int(rows["patient_id"].nunique()),
        "studies": int(rows["study_uid"].nunique()) if "study_uid" in rows.columns else 0,
        "images": int(len(rows)),
    }
    if not record:
        return {"checked": False, "evaluated": evaluated,
                "reason": "the checkpoint predates the record of its training data; retrain to audit"}
    root = Path(root)
    patient_h = rows["patient_id"].map(hash_id)
    study_h = rows["study_uid"].map(hash_id) if "study_uid" in rows.columns else pd.Series("", index=rows.index)
    image_h = rows["image_path"].map(lambda p: pixel_hash(root / p)) if pixels else pd.Series("", index=rows.index)
    by_split: dict[str, dict[str, int]] = {}
    hit = pd.Series(False, index=rows.index)
    hits: dict[str, pd.Series] = {k: pd.Series(False, index=rows.index) for k in ("patients", "studies", "images")}
    for split, sets in (record.get("splits") or {}).items():
        masks = {"patients": patient_h.isin(set(sets.get("patients", ()))),
                 "studies": study_h.isin(set(sets.get("studies", ()))),
                 "images": image_h.isin(set(sets.get("images", ()))) if pixels else pd.Series(False, index=rows.index)}
        by_split[split] = {"patients": int(rows.loc[masks["patients"], "patient_id"].nunique()),
                           "studies": int(study_h[masks["studies"]].nunique()),
                           "images": int(masks["images"].sum())}
        for key, mask in masks.items():
            hits[key] |= mask
            hit |= mask
    return {
        "checked": True,
        "pixels_checked": pixels,
        "evaluated": evaluated,
        "overlap_patients": int(rows.loc[hits["patients"], "patient_id"].nunique()),
        "overlap_studies": int(study_h[hits["studies"]].nunique()),
        "overlap_images": int(hits["images"].sum()),
        "overlap_rows": int(hit.sum()),
        # Patients with any overlapping row (by id, study or pixels): what a renamed copy shows up as.
        "overlap_patients_any": int(rows.loc[hit, "patient_id"].nunique()),
        "by_split": by_split,
        "training_manifest_fingerprint": record.get("manifest_fingerprint"),
        "same_manifest": manifest_fingerprint is not None and manifest_fingerprint == record.get("manifest_fingerprint"),
    }


def overlap_message(audit: Mapping[str, Any], *, what: str) -> str | None:
    """The one-line error for an audit that found overlap, or ``None`` when there is none.

    Args:
        audit: :func:`audit_overlap`'s dict.
        what: The evaluated data, e.g. ``"the test split of 'prepared/manifest.parquet'"``.
    """
    if not audit.get("checked") or not audit.get("overlap_rows"):
        return None
    return (
        f"{what} holds {audit['overlap_patients_any']} of its {audit['evaluated']['patients']} patients "
        f"({audit['overlap_rows']} of {audit['evaluated']['images']} images; by id {audit['overlap_patients']} "
        f"patients, by StudyInstanceUID {audit['overlap_studies']} studies, by pixels {audit['overlap_images']} "
        "images) that the model trained or was validated on: its figures would not measure generalisation. "
        "Evaluate on data prepared apart from the training data (re-running prepare with another seed "
        "rewrites the splits: retrain on the new manifest), or pass --allow-overlap to report the overlap "
        "in the leak audit instead of stopping."
    )

