"""Synthetic, BCS-DBT-shaped datasets for the demo, the tests and the benchmarks.

The low-level writer :func:`write_dbt_dicom` produces one multi-frame Breast
Tomosynthesis Image Storage file the way the real collection stores them: JPEG 2000
lossless, BitsAllocated 16 / BitsStored 10, MONOCHROME2, the VOI window and the frame
laterality in the shared functional groups.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

BREAST_TOMOSYNTHESIS_STORAGE = "1.2.840.10008.5.1.4.1.1.13.1.3"

#: Fixed UID root so that the same seed gives the same bytes.
_UID_PREFIX = "1.2.826.0.1.3680043.10.1234."


def deterministic_uid(*parts: object) -> str:
    """A DICOM UID derived from ``parts`` (stable across runs, unlike ``generate_uid()``)."""
    return generate_uid(prefix=_UID_PREFIX, entropy_srcs=[str(p) for p in parts])


def write_dbt_dicom(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    *,
    patient_id: str,
    study_uid: str,
    view: str,
    window_center: float,
    window_width: float,
    frame_laterality: str | None = None,
    transfer_syntax: str = JPEG2000Lossless,
    bits_stored: int = 10,
    photometric: str = "MONOCHROME2",
    window_location: str = "shared",
) -> Path:
    """Write ``frames`` (n, rows, cols; uint16) as one multi-frame DBT DICOM file.

    Args:
        path: Where to write; parent folders are created.
        frames: Stored pixel values, shape ``(n_frames, rows, columns)``, below ``2**bits_stored``.
        patient_id: PatientID, e.g. ``DBT-P00013``.
        study_uid: The collection's short study id (``DBT-S00163``); a real UID is derived from it.
        view: ``lcc``, ``lmlo``, ``rcc`` or ``rmlo``.
        window_center: VOI window centre.
        window_width: VOI window width.
        frame_laterality: FrameLaterality written in the shared functional groups; defaults to the
            view's side (pass the other side to reproduce the collection's wrong headers).
        transfer_syntax: Transfer syntax UID; JPEG 2000 lossless as in BCS-DBT.
        bits_stored: BitsStored (10 in BCS-DBT).
        photometric: MONOCHROME2 (BCS-DBT) or MONOCHROME1.
        window_location: ``shared`` (functional groups, as in BCS-DBT), ``top`` (top-level
            WindowCenter/WindowWidth) or ``none``.

    Returns:
        The path written.
    """
    frames = np.ascontiguousarray(frames, dtype=np.uint16)
    if frames.ndim != 3:
        raise ValueError(f"frames must be (n, rows, cols), got shape {frames.shape}")
    n, rows, cols = frames.shape
    side = view[0].upper()
    if side not in ("L", "R"):
        raise ValueError(f"view {view!r}: expected one of lcc, lmlo, rcc, rmlo")

    meta = FileMetaDataset()
    sop_uid = deterministic_uid(patient_id, study_uid, view, "sop")
    meta.MediaStorageSOPClassUID = BREAST_TOMOSYNTHESIS_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _UID_PREFIX + "1"

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = BREAST_TOMOSYNTHESIS_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = deterministic_uid(patient_id, study_uid)
    ds.SeriesInstanceUID = deterministic_uid(patient_id, study_uid, view)
    ds.FrameOfReferenceUID = deterministic_uid(patient_id, study_uid, view, "for")
    ds.Modality = "MG"
    ds.PatientID = patient_id
    ds.PatientName = "Synthetic^" + patient_id
    ds.StudyID = study_uid
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImageLaterality = frame_laterality or side
    ds.ViewPosition = "CC" if view.endswith("cc") else "MLO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.NumberOfFrames = n
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0

    shared = Dataset()
    anatomy = Dataset()
    anatomy.FrameLaterality = frame_laterality or side
    shared.FrameAnatomySequence = DicomSequence([anatomy])
    if window_location == "shared":
        voi = Dataset()
        voi.WindowCenter = f"{window_center:g}"
        voi.WindowWidth = f"{window_width:g}"
        shared.FrameVOILUTSequence = DicomSequence([voi])
    elif window_location == "top":
        ds.WindowCenter = f"{window_center:g}"
        ds.WindowWidth = f"{window_width:g}"
    elif window_location != "none":
        raise ValueError(f"window_location {window_location!r}: expected shared, top or none")
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for i in range(n):
        item = Dataset()
        content = Dataset()
        content.InStackPositionNumber = i + 1
        item.FrameContentSequence = DicomSequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)

    ds.PixelData = frames.tobytes()
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax, frames, generate_instance_uid=False)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, out)
    return out
