"""Multi-frame Breast Tomosynthesis DICOM files written the way BCS-DBT stores them.

JPEG 2000 lossless (pydicom's encoder, one codestream per frame), BitsAllocated 16 /
BitsStored 10, MONOCHROME2, the VOI window and the frame laterality in the shared
functional groups. :func:`write_dbt_dicom_frames` encodes frames as they arrive, so a
full-size volume never sits in memory whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Required, TypedDict, Unpack

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.pixels import get_encoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless
from pydicom.valuerep import VR

from synth.layout import BREAST_TOMOSYNTHESIS_STORAGE, UID_PREFIX, deterministic_uid
from tasks.core.files import atomic_write


def dbt_dataset(
    *,
    n: int,
    rows: int,
    cols: int,
    patient_id: str,
    study_uid: str,
    view: str,
    window_center: float,
    window_width: float,
    frame_laterality: str | None,
    bits_stored: int,
    photometric: str,
    window_location: str,
) -> Dataset:
    """The DBT header (everything but the pixel data), uncompressed transfer syntax."""
    side = view[0].upper()
    if side not in ("L", "R"):
        raise ValueError(f"view {view!r}: expected one of lcc, lmlo, rcc, rmlo")

    meta = FileMetaDataset()
    sop_uid = deterministic_uid(patient_id, study_uid, view, "sop")
    meta.MediaStorageSOPClassUID = BREAST_TOMOSYNTHESIS_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID_PREFIX + "1"

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
    return ds


def _save_atomic(ds: Dataset, path: str | os.PathLike[str]) -> Path:
    return atomic_write(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))


class DbtHeader(TypedDict, total=False):
    """The header keywords of :func:`write_dbt_dicom` and :func:`write_dbt_dicom_frames`.

    Attributes:
        patient_id: PatientID, e.g. ``DBT-P00013`` (required).
        study_uid: The collection's short study id (``DBT-S00163``); a real UID is derived from
            it (required).
        view: ``lcc``, ``lmlo``, ``rcc`` or ``rmlo`` (required).
        window_center: VOI window centre (required).
        window_width: VOI window width (required).
        frame_laterality: FrameLaterality written in the shared functional groups; defaults to the
            view's side (pass the other side to reproduce the collection's wrong headers).
        transfer_syntax: Transfer syntax UID; JPEG 2000 lossless as in BCS-DBT.
        bits_stored: BitsStored (10 in BCS-DBT).
        photometric: MONOCHROME2 (BCS-DBT) or MONOCHROME1.
        window_location: ``shared`` (functional groups, as in BCS-DBT), ``top`` (top-level
            WindowCenter/WindowWidth) or ``none``.
    """

    patient_id: Required[str]
    study_uid: Required[str]
    view: Required[str]
    window_center: Required[float]
    window_width: Required[float]
    frame_laterality: str | None
    transfer_syntax: str
    bits_stored: int
    photometric: str
    window_location: str


#: The optional keywords of :class:`DbtHeader` and their values when not given.
HEADER_DEFAULTS: dict[str, object] = {
    "frame_laterality": None,
    "transfer_syntax": JPEG2000Lossless,
    "bits_stored": 10,
    "photometric": "MONOCHROME2",
    "window_location": "shared",
}


def write_dbt_dicom(path: str | os.PathLike[str], frames: np.ndarray, **header: Unpack[DbtHeader]) -> Path:
    """Write ``frames`` (n, rows, cols; uint16) as one multi-frame DBT DICOM file.

    Args:
        path: Where to write; parent folders are created.
        frames: Stored pixel values, shape ``(n_frames, rows, columns)``, below ``2**bits_stored``.
        **header: The header values, :class:`DbtHeader`.

    Returns:
        The path written.
    """
    frames = np.ascontiguousarray(frames, dtype=np.uint16)
    if frames.ndim != 3:
        raise ValueError(f"frames must be (n, rows, cols), got shape {frames.shape}")
    n, rows, cols = frames.shape
    return write_dbt_dicom_frames(path, iter(frames), n_frames=n, rows=rows, columns=cols, **header)


def write_dbt_dicom_frames(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    *,
    n_frames: int,
    rows: int,
    columns: int,
    **header: Unpack[DbtHeader],
) -> Path:
    """Like :func:`write_dbt_dicom`, but ``frames`` yields one ``(rows, columns)`` frame at a time.

    Each frame is encoded as soon as it arrives, so only the compressed codestreams are held;
    for the same pixels the file is byte-identical to :func:`write_dbt_dicom`'s.

    Args:
        path: Where to write; parent folders are created.
        frames: Iterable of ``n_frames`` uint16 arrays of shape ``(rows, columns)``.
        n_frames: NumberOfFrames; ``frames`` must yield exactly this many.
        rows: Rows of every frame.
        columns: Columns of every frame.
        **header: The header values, :class:`DbtHeader`.

    Returns:
        The path written.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    values = {**HEADER_DEFAULTS, **header}
    uid = UID(values.pop("transfer_syntax"))
    ds = dbt_dataset(n=n_frames, rows=rows, cols=columns, **values)
    encode = frame_encoder(ds, uid)
    parts: list[bytes] = []
    for frame in frames:
        frame = np.ascontiguousarray(frame, dtype=np.uint16)
        if frame.shape != (rows, columns):
            raise ValueError(
                f"{path}: frame {len(parts)} has shape {frame.shape}, expected {(rows, columns)}"
            )
        if len(parts) == n_frames:
            raise ValueError(f"{path}: frames yielded more than n_frames={n_frames}")
        parts.append(encode(frame))
    if len(parts) != n_frames:
        raise ValueError(
            f"{path}: frames yielded {len(parts)} frames, expected n_frames={n_frames}"
        )
    return save_encoded(ds, path, parts, uid)


def frame_encoder(ds: Dataset, uid: UID) -> Callable[[np.ndarray], bytes]:
    """Encode one (rows, columns) frame with ``ds``'s pixel description (pydicom's encoder)."""
    if uid == ExplicitVRLittleEndian:
        return lambda frame: np.ascontiguousarray(frame, dtype=np.uint16).tobytes()
    encoder = get_encoder(uid)
    opts = as_pixel_options(ds, number_of_frames=1)
    return lambda frame: encoder.encode(frame, **opts)


def save_encoded(ds: Dataset, path: str | os.PathLike[str], parts: list[bytes], uid: UID) -> Path:
    """Put per-frame codestreams into ``ds`` (encapsulated as pydicom's compress does) and save."""
    if uid == ExplicitVRLittleEndian:
        ds.PixelData = b"".join(parts)
        return _save_atomic(ds, path)
    # PS3.5 Annex A.4, with the extended offset table when the basic one would overflow.
    total = (len(parts) - 1) * 8 + sum(len(p) for p in parts[:-1])
    if total > 2**32 - 1:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = (
            encapsulate_extended(parts)
        )
    else:
        ds.PixelData = encapsulate(parts)
    elem = ds["PixelData"]
    elem.is_undefined_length = True
    elem.VR = VR.OB
    ds.file_meta.TransferSyntaxUID = uid
    return _save_atomic(ds, path)


# ---------------------------------------------------------------------------------------------
# The plan: who has what, where it lives
