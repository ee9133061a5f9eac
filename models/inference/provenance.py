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
  image size, which is how a copied or re-exported collection is usually prepared);
* source volumes as the first 16 hex of each source DICOM's SHA-256 (the manifest's
  ``source_sha256``): this survives renamed ids, another image size and another choice of
  frames, so a re-prepared copy of the training collection is found whatever its settings;
* the shapes of the training images, so an audit never claims a pixel check that could not
  match (images of another size).

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
    return _pixel_hash_and_shape(path)[0]


def _pixel_hash_and_shape(path: str | os.PathLike[str]) -> tuple[str, str]:
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"))
    h = hashlib.sha256(f"{pixels.shape}".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()[:16], "x".join(str(n) for n in pixels.shape)


def _sources(rows: pd.DataFrame) -> pd.Series:
    """The first 16 hex of each row's source DICOM SHA-256 (empty where the manifest has none)."""
    if "source_sha256" not in rows.columns:
        return pd.Series("", index=rows.index, dtype=object)
    return rows["source_sha256"].astype(object).where(rows["source_sha256"].notna(), "").map(lambda s: str(s)[:16])


def _original_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows that are not offline-augmented copies (their pixels are not in any collection)."""
    if "augmented_from" in frame.columns:
        return frame[frame["augmented_from"].isna()]
    return frame


def _split_sets(rows: pd.DataFrame, root: Path) -> dict[str, list[str]]:
    studies = rows["study_uid"] if "study_uid" in rows.columns else pd.Series([], dtype=object)
    images = [_pixel_hash_and_shape(root / p) for p in rows["image_path"].dropna()]
    return {
        "patients": sorted({hash_id(p) for p in rows["patient_id"].dropna()}),
        "studies": sorted({hash_id(s) for s in studies.dropna()}),
        "images": sorted({h for h, _ in images}),
        "image_shapes": sorted({shape for _, shape in images}),
        "sources": sorted(set(_sources(rows)) - {""}),
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
    hashed = (rows["image_path"].map(lambda p: _pixel_hash_and_shape(root / p)) if pixels
              else pd.Series([("", "")] * len(rows), index=rows.index, dtype=object))
    image_h = hashed.map(lambda t: t[0])
    source_h = _sources(rows)
    splits = record.get("splits") or {}
    trained_shapes = {s for sets in splits.values() for s in sets.get("image_shapes", ())}
    evaluated_shapes = set(hashed.map(lambda t: t[1])) - {""}
    # A pixel hash can only match an image of the same size: never claim a check that could not match.
    pixels_comparable = bool(pixels and evaluated_shapes and (not trained_shapes or evaluated_shapes & trained_shapes))
    sources_comparable = bool(any("sources" in sets for sets in splits.values()) and (source_h != "").any())
    empty = pd.Series(False, index=rows.index)
    by_split: dict[str, dict[str, int]] = {}
    hit = pd.Series(False, index=rows.index)
    hits: dict[str, pd.Series] = {k: empty.copy() for k in ("patients", "studies", "images", "sources")}
    for split, sets in splits.items():
        masks = {"patients": patient_h.isin(set(sets.get("patients", ()))),
                 "studies": study_h.isin(set(sets.get("studies", ()))),
                 "images": image_h.isin(set(sets.get("images", ()))) if pixels_comparable else empty,
                 "sources": (source_h.isin(set(sets.get("sources", ()))) & (source_h != "")
                             if sources_comparable else empty)}
        by_split[split] = {"patients": int(rows.loc[masks["patients"], "patient_id"].nunique()),
                           "studies": int(study_h[masks["studies"]].nunique()),
                           "images": int(masks["images"].sum()),
                           "source_volumes": int(source_h[masks["sources"]].nunique())}
        for key, mask in masks.items():
            hits[key] |= mask
            hit |= mask
    compared = ["patient_id (salted hash)", "study_uid (salted hash)"]
    notes = []
    if pixels_comparable:
        compared.append("image pixels")
    elif pixels:
        notes.append(f"pixels not compared: the training images are {', '.join(sorted(trained_shapes))} and the "
                     f"evaluated ones {', '.join(sorted(evaluated_shapes)) or 'none'}, so no pixel hash could match")
    if sources_comparable:
        compared.append("source DICOM sha256")
    else:
        notes.append("source DICOMs not compared: the checkpoint or the evaluated manifest predates source_sha256")
    return {
        "checked": True,
        "pixels_checked": pixels_comparable,
        "sources_checked": sources_comparable,
        "keys_compared": compared,
        "notes": notes,
        "evaluated": evaluated,
        "overlap_patients": int(rows.loc[hits["patients"], "patient_id"].nunique()),
        "overlap_studies": int(study_h[hits["studies"]].nunique()),
        "overlap_images": int(hits["images"].sum()),
        "overlap_source_volumes": int(source_h[hits["sources"]].nunique()),
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
        f"images, by source DICOM {audit.get('overlap_source_volumes', 0)} volumes) that the model trained or was "
        "validated on: its figures would not measure generalisation. "
        "Evaluate on data prepared apart from the training data (re-running prepare with another seed "
        "rewrites the splits: retrain on the new manifest), or pass --allow-overlap to report the overlap "
        "in the leak audit instead of stopping."
    )

