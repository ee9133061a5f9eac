"""Synthetic, BCS-DBT-shaped datasets for the demo, the tests and the benchmarks.

The low-level writer :func:`write_dbt_dicom` produces one multi-frame Breast
Tomosynthesis Image Storage file the way the real collection stores them: JPEG 2000
lossless, BitsAllocated 16 / BitsStored 10, MONOCHROME2, the VOI window and the frame
laterality in the shared functional groups. :func:`write_dbt_dicom_frames` writes the same
file from frames produced one at a time, so a full-size volume never sits in memory whole.

:func:`generate_dataset` builds a whole collection in miniature: the TCIA folder tree, the
release's CSVs (file paths, labels, boxes; train / validation / test, with both of the
release's naming styles), one DICOM per view with breast-like anatomy and visible lesions
inside the boxes, and a report export for the report-filtering step. It reproduces the
collection's traps on purpose (the ``-NA-`` series folders, volumes stored rotated by 180
degrees, wrong FrameLaterality headers, missing views, label rows with two flags) so the
pipeline's real code paths run on it. Everything is a function of ``seed``: the same seed
gives the same bytes in every file.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.pixels import get_encoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from pydicom.valuerep import VR

from tasks.io import atomic_write, atomic_write_text

BREAST_TOMOSYNTHESIS_STORAGE = "1.2.840.10008.5.1.4.1.1.13.1.3"

#: Fixed UID root so that the same seed gives the same bytes.
_UID_PREFIX = "1.2.826.0.1.3680043.10.1234."

#: Frame size of the real collection (other widths occur there too).
FULL_ROWS = 2457
FULL_COLUMNS = 1890
#: JPEG 2000 (OpenJPEG's default six resolution levels) needs at least 32 pixels a side.
MIN_FRAME_SIDE = 32

COLLECTION_FOLDER = "Breast-Cancer-Screening-DBT"
VIEWS = ("lcc", "lmlo", "rcc", "rmlo")
#: Cohorts in increasing severity; the labels CSV has one 0/1 column for each.
COHORTS = ("normal", "actionable", "benign", "cancer")
SPLITS = ("train", "validation", "test")

FILE_PATHS_COLUMNS = ("PatientID", "StudyUID", "View", "descriptive_path", "classic_path")
LABELS_COLUMNS = ("PatientID", "StudyUID", "View", "Normal", "Actionable", "Benign", "Cancer")
BOXES_COLUMNS = (
    "PatientID", "StudyUID", "View", "Subject", "Slice", "X", "Y", "Width", "Height",
    "Class", "AD", "VolumeSlices",
)
REPORT_COLUMNS = ("report_id", "patient_id", "study_uid", "report_type", "report_date", "text")
REPORTS_FILE = "reports.csv"
#: Dates of the collection's studies: the report filter keeps radiology reports in this range.
REPORT_DATE_RANGE = (_dt.date(2014, 1, 1), _dt.date(2018, 1, 30))

_MAX_VALUE = 1023  # 10 bits stored
#: Worker processes for encoding; None decides from the amount of work (tests set it).
_WORKERS: int | None = None


def csv_file_name(kind: str, split: str) -> str:
    """The release's CSV name for ``kind`` (file-paths, labels, boxes) and ``split``.

    The train files carry a space after ``BCS-DBT`` and the validation and test files a
    hyphen, so that readers are exercised on both spellings seen in the wild.
    """
    if kind not in ("file-paths", "labels", "boxes"):
        raise ValueError(f"kind {kind!r}: expected one of file-paths, labels, boxes")
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    sep = " " if split == "train" else "-"
    return f"BCS-DBT{sep}{kind}-{split}-v2.csv"


def deterministic_uid(*parts: object) -> str:
    """A DICOM UID derived from ``parts`` (stable across runs, unlike ``generate_uid()``)."""
    return generate_uid(prefix=_UID_PREFIX, entropy_srcs=[str(p) for p in parts])


# ---------------------------------------------------------------------------------------------
# DICOM writers
# ---------------------------------------------------------------------------------------------


def _dbt_dataset(
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
    return ds


def _save_atomic(ds: Dataset, path: str | os.PathLike[str]) -> Path:
    return atomic_write(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))


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
    return write_dbt_dicom_frames(
        path, iter(frames), n_frames=n, rows=rows, columns=cols, patient_id=patient_id,
        study_uid=study_uid, view=view, window_center=window_center, window_width=window_width,
        frame_laterality=frame_laterality, transfer_syntax=transfer_syntax, bits_stored=bits_stored,
        photometric=photometric, window_location=window_location,
    )


def write_dbt_dicom_frames(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    *,
    n_frames: int,
    rows: int,
    columns: int,
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
    """Like :func:`write_dbt_dicom`, but ``frames`` yields one ``(rows, columns)`` frame at a time.

    Each frame is encoded as soon as it arrives, so only the compressed codestreams are held;
    for the same pixels the file is byte-identical to :func:`write_dbt_dicom`'s.

    Args:
        path: Where to write; parent folders are created.
        frames: Iterable of ``n_frames`` uint16 arrays of shape ``(rows, columns)``.
        n_frames: NumberOfFrames; ``frames`` must yield exactly this many.
        rows: Rows of every frame.
        columns: Columns of every frame.
        patient_id: As in :func:`write_dbt_dicom`.
        study_uid: As in :func:`write_dbt_dicom`.
        view: As in :func:`write_dbt_dicom`.
        window_center: As in :func:`write_dbt_dicom`.
        window_width: As in :func:`write_dbt_dicom`.
        frame_laterality: As in :func:`write_dbt_dicom`.
        transfer_syntax: As in :func:`write_dbt_dicom`.
        bits_stored: As in :func:`write_dbt_dicom`.
        photometric: As in :func:`write_dbt_dicom`.
        window_location: As in :func:`write_dbt_dicom`.

    Returns:
        The path written.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    ds = _dbt_dataset(
        n=n_frames, rows=rows, cols=columns, patient_id=patient_id, study_uid=study_uid,
        view=view, window_center=window_center, window_width=window_width,
        frame_laterality=frame_laterality, bits_stored=bits_stored, photometric=photometric,
        window_location=window_location,
    )
    uid = UID(transfer_syntax)
    encode = _frame_encoder(ds, uid)
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
    return _save_encoded(ds, path, parts, uid)


def _frame_encoder(ds: Dataset, uid: UID) -> Callable[[np.ndarray], bytes]:
    """Encode one (rows, columns) frame with ``ds``'s pixel description (pydicom's encoder)."""
    if uid == ExplicitVRLittleEndian:
        return lambda frame: np.ascontiguousarray(frame, dtype=np.uint16).tobytes()
    encoder = get_encoder(uid)
    opts = as_pixel_options(ds, number_of_frames=1)
    return lambda frame: encoder.encode(frame, **opts)


def _save_encoded(ds: Dataset, path: str | os.PathLike[str], parts: list[bytes], uid: UID) -> Path:
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
# ---------------------------------------------------------------------------------------------


@dataclass
class _Lesion:
    slice: int
    x: int
    y: int
    width: int
    height: int
    cls: str
    ad: int
    amplitude: float
    sigma_z: float
    spiculated: bool
    lobes: int
    lobe_amp: float
    phase: float
    spicule_angles: tuple[float, ...]
    spicule_lengths: tuple[float, ...]


@dataclass
class _Breast:
    """Anatomy of one volume in the oriented frame (chest wall on the view's side)."""

    cy: float  # centre row of the half-ellipse
    ay: float  # vertical semi-axis (pixels)
    ax: float  # horizontal semi-axis, from the chest wall (pixels)
    base: float  # mean tissue value
    amp: float  # texture amplitude
    pect_w: float  # pectoral triangle width along the top edge (0 for CC)
    pect_h: float  # pectoral triangle height along the chest wall
    pect_amp: float
    noise: float

    def ellipse(self, y: np.ndarray, dx: np.ndarray) -> np.ndarray:
        """Normalised radius (1 on the skin line) at rows ``y``, ``dx`` px from the chest wall."""
        return np.sqrt(((y - self.cy) / self.ay) ** 2 + (dx / self.ax) ** 2)

    def in_pectoral(self, y: float, dx: float) -> bool:
        return self.pect_w > 0 and dx / self.pect_w + y / self.pect_h < 1.0


@dataclass
class _Volume:
    index: int
    patient_id: str
    patient_number: int
    study_uid: str
    view: str
    split: str
    n_frames: int
    flags: tuple[int, int, int, int]
    study_folder: str
    series_number: int
    series_suffix: int
    breast: _Breast | None = None
    lesions: list[_Lesion] = field(default_factory=list)
    n_lesions: int = 0
    rotated: bool = False
    na_drift: bool = False
    wrong_laterality: bool = False

    @property
    def key(self) -> str:
        return f"{self.patient_id}/{self.study_uid}/{self.view}"

    @property
    def side(self) -> str:
        return self.view[0].upper()

    @property
    def descriptive_path(self) -> str:
        return (
            f"{COLLECTION_FOLDER}/{self.patient_id}/{self.study_folder}/"
            f"{self.series_number}.000000-{self.series_suffix}/1-1.dcm"
        )

    @property
    def disk_path(self) -> str:
        """Where the file really is: the ``-NA-`` variant for drifted volumes."""
        if not self.na_drift:
            return self.descriptive_path
        return (
            f"{COLLECTION_FOLDER}/{self.patient_id}/{self.study_folder}/"
            f"{self.series_number}.000000-NA-{self.series_suffix}/1-1.dcm"
        )

    @property
    def classic_path(self) -> str:
        study = deterministic_uid(self.patient_id, self.study_uid)
        series = deterministic_uid(self.patient_id, self.study_uid, self.view)
        return f"{COLLECTION_FOLDER}/{self.patient_id}/{study}/{series}/1-1.dcm"


@dataclass
class _Study:
    patient_index: int
    cohort: str
    extra: bool  # the second, normal study of a two-study patient
    side: str | None = None  # lesion / finding side, "l" or "r"
    double_flag: bool = False
    views: list[str] = field(default_factory=lambda: list(VIEWS))
    study_uid: str = ""
    number: int = 0
    date: _dt.date | None = None


@dataclass
class _Patient:
    number: int
    patient_id: str
    cohort: str
    split: str = "train"
    studies: list[_Study] = field(default_factory=list)


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def _cohort_counts(patients: int, positive_fraction: float | None) -> dict[str, int]:
    if positive_fraction is None:
        cancer = max(2, _round_half_up(0.016 * patients))
        benign = max(2, _round_half_up(0.02 * patients))
    else:
        positives = _round_half_up(positive_fraction * patients)
        benign = positives // 2
        cancer = positives - benign
    actionable = max(1, _round_half_up(0.05 * patients))
    # Floors can exceed tiny datasets: the more severe cohorts keep their places first.
    cancer = min(cancer, patients)
    benign = min(benign, patients - cancer)
    actionable = min(actionable, patients - cancer - benign)
    normal = patients - cancer - benign - actionable
    return {"normal": normal, "actionable": actionable, "benign": benign, "cancer": cancer}


def _pick(rng: np.random.Generator, n: int, k: int, must: Sequence[int] = ()) -> set[int]:
    """``k`` distinct indices below ``n``, including ``must`` (as far as ``k`` allows)."""
    k = min(k, n)
    chosen = [int(i) for i in must][:k]
    rest = np.array(sorted(set(range(n)) - set(chosen)), dtype=np.int64)
    if k > len(chosen):
        chosen += [int(i) for i in rng.choice(rest, size=k - len(chosen), replace=False)]
    return set(chosen)


def _split_patients(rng: np.random.Generator, patients: list[_Patient]) -> None:
    """Assign train / validation / test by patient, stratified by cohort (about 80/8/12)."""
    by_split: dict[str, list[int]] = {s: [] for s in SPLITS}
    for cohort in reversed(COHORTS):
        members = [i for i, p in enumerate(patients) if p.cohort == cohort]
        order = [members[int(j)] for j in rng.permutation(len(members))]
        n_test = _round_half_up(0.12 * len(order))
        n_val = _round_half_up(0.08 * len(order))
        by_split["test"] += order[:n_test]
        by_split["validation"] += order[n_test:n_test + n_val]
        by_split["train"] += order[n_test + n_val:]
    # Every split gets a patient when there are enough; move normal ones out of train.
    for split in ("validation", "test"):
        if not by_split[split] and len(patients) >= 3:
            movable = [i for i in by_split["train"] if patients[i].cohort == "normal"]
            donor = (movable or by_split["train"])[-1]
            by_split["train"].remove(donor)
            by_split[split].append(donor)
    for split, members in by_split.items():
        for i in members:
            patients[i].split = split


def _place_box(
    rng: np.random.Generator,
    breast: _Breast,
    rows: int,
    cols: int,
    side: str,
    taken: list[tuple[int, int, int, int]],
) -> tuple[int, int, int, int] | None:
    """A box (x, y, w, h) inside the breast, off the pectoral muscle, clear of ``taken``."""
    frac = float(rng.uniform(0.10, 0.25))
    aspect = float(rng.uniform(0.8, 1.25))
    for _shrink in range(6):
        w = max(4, _round_half_up(frac * cols))
        h = max(4, min(_round_half_up(w * aspect), _round_half_up(0.3 * rows)))
        for _try in range(200):
            x = int(rng.integers(0, cols - w + 1))
            y = int(rng.integers(0, rows - h + 1))
            xs = np.array([x, x + w - 1, x, x + w - 1], dtype=np.float64)
            ys = np.array([y, y, y + h - 1, y + h - 1], dtype=np.float64)
            dx = (cols - 1 - xs) if side == "R" else xs
            if np.any(breast.ellipse(ys, dx) > 0.85):
                continue
            # The box point nearest the pectoral triangle is its top corner at the chest wall.
            near_dx = float(dx.min())
            if breast.in_pectoral(float(y), near_dx):
                continue
            if any(
                x < tx + tw + 2 and tx < x + w + 2 and y < ty + th + 2 and ty < y + h + 2
                for tx, ty, tw, th in taken
            ):
                continue
            return x, y, w, h
        frac *= 0.8
    return None


def _plan_image(
    vol: _Volume, rows: int, cols: int, seed: int, lesion_classes: list[tuple[str, int]]
) -> None:
    """Draw the volume's anatomy and place its lesions (box coordinates are oriented)."""
    rng = np.random.default_rng([seed, 1, vol.index])
    mlo = vol.view.endswith("mlo")
    breast = _Breast(
        cy=rows * (0.5 + float(rng.uniform(-0.04, 0.04))),
        ay=rows * float(rng.uniform(0.38, 0.47)),
        ax=cols * float(rng.uniform(0.62, 0.85)),
        base=float(rng.uniform(240, 360)),
        amp=float(rng.uniform(40, 70)),
        pect_w=cols * float(rng.uniform(0.18, 0.3)) if mlo else 0.0,
        pect_h=rows * float(rng.uniform(0.3, 0.45)) if mlo else 1.0,
        pect_amp=float(rng.uniform(50, 90)) if mlo else 0.0,
        noise=float(rng.uniform(1.5, 3.0)),
    )
    vol.breast = breast
    taken: list[tuple[int, int, int, int]] = []
    n = vol.n_frames
    for cls, ad in lesion_classes:
        box = _place_box(rng, breast, rows, cols, vol.side, taken)
        if box is None:  # pragma: no cover - the breast always has room for a 10% box
            raise RuntimeError(f"{vol.key}: could not place a lesion box in a {rows}x{cols} frame")
        taken.append(box)
        spiculated = bool(ad) or bool(rng.random() < (0.5 if cls == "cancer" else 0.1))
        k = int(rng.integers(6, 13))
        vol.lesions.append(
            _Lesion(
                slice=int(rng.integers(n // 4, n - n // 4)) if n > 1 else 0,
                x=box[0], y=box[1], width=box[2], height=box[3], cls=cls, ad=int(ad),
                amplitude=float(rng.uniform(260, 340)) * (0.9 if ad else 1.0),
                sigma_z=float(rng.uniform(0.9, 1.3)),
                spiculated=spiculated,
                lobes=int(rng.integers(3, 7)),
                lobe_amp=float(rng.uniform(0.05, 0.1)) if cls == "cancer" else 0.02,
                phase=float(rng.uniform(0, 2 * np.pi)),
                spicule_angles=tuple(float(a) for a in rng.uniform(-np.pi, np.pi, k)),
                spicule_lengths=tuple(float(s) for s in rng.uniform(0.9, 1.0, k)),
            )
        )


# ---------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------


def _resize_axes(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of a linear resampling from ``size_in`` to ``size_out`` samples."""
    pos = (np.arange(size_out, dtype=np.float32) + 0.5) * (size_in / size_out) - 0.5
    pos = np.clip(pos, 0, size_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, size_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)


class _Resizer:
    """Bilinear resampling of (h, w) grids to (rows, cols), with the indices computed once."""

    def __init__(self, shape_in: tuple[int, int], shape_out: tuple[int, int]) -> None:
        self.r = _resize_axes(shape_in[0], shape_out[0])
        self.c = _resize_axes(shape_in[1], shape_out[1])

    def __call__(self, a: np.ndarray) -> np.ndarray:
        lo, hi, w = self.r
        t = a[lo] * (1 - w)[:, None] + a[hi] * w[:, None]
        lo, hi, w = self.c
        return t[:, lo] * (1 - w) + t[:, hi] * w


def _interp_z(grid: np.ndarray, z: int, n: int) -> np.ndarray:
    """Linear interpolation of a (nz, h, w) grid at frame ``z`` of ``n`` (slow change in depth)."""
    t = (z / max(n - 1, 1)) * (grid.shape[0] - 1)
    i = min(int(t), grid.shape[0] - 2)
    f = np.float32(t - i)
    return grid[i] * (1 - f) + grid[i + 1] * f


def _lesion_template(les: _Lesion, min_side_px: float) -> np.ndarray:
    """Lesion profile in its box (values 0..1): a plateaued mass, maybe with spicules."""
    h, w = les.height, les.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    u = (xx - w / 2) / (w / 2)
    v = (yy - h / 2) / (h / 2)
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    r0 = 0.9 * (1 + les.lobe_amp * np.sin(les.lobes * theta + les.phase))
    if les.spiculated:
        r0 = r0 * 0.8  # leave room in the box for the spicules
    mass = np.clip((r0 - rho) / (0.2 * r0), 0, 1)
    out = mass.astype(np.float32)
    if les.spiculated:
        half_width = max(0.6, 0.0025 * min_side_px)
        scale = min(h, w) / 2
        for angle, length in zip(les.spicule_angles, les.spicule_lengths):
            d_ang = np.abs((theta - angle + np.pi) % (2 * np.pi) - np.pi)
            across = d_ang * rho * scale
            line = np.clip(1 - across / half_width, 0, 1)
            along = (rho > 0.5 * r0) & (rho < length)
            taper = np.clip(1 - 0.6 * (rho - r0) / np.maximum(length - r0, 1e-3), 0.4, 1)
            out = np.maximum(out, (0.8 * line * taper * along).astype(np.float32))
    return out


#: Weights of the four texture octaves (coarse to fine), in units of the breast's ``amp``.
_OCTAVE_WEIGHTS = (0.6, 0.45, 0.3, 0.2)
#: Standard deviation of the tissue texture per unit of ``amp`` (independent octaves).
_TEXTURE_SD = float(np.sqrt(sum(w * w for w in _OCTAVE_WEIGHTS)))
#: Network input sides at which the summary says how many pixels the smallest lesion spans.
_REPORTED_SIDES = (64, 96, 224)


class _Renderer:
    """Draws any frame of one volume on its own (so frames can be encoded in parallel).

    The texture grids come from the volume's generator and each frame's pixel noise from a
    generator of its own, so frame ``z`` is the same whichever process draws it.
    """

    def __init__(self, vol: _Volume, rows: int, cols: int, seed: int) -> None:
        breast = vol.breast
        assert breast is not None
        self.vol, self.rows, self.cols, self.seed = vol, rows, cols, seed
        rng = np.random.default_rng([seed, 3, vol.index])
        n = vol.n_frames
        y = np.arange(rows, dtype=np.float32)[:, None]
        x = np.arange(cols, dtype=np.float32)[None, :]
        dx = (cols - 1 - x) if vol.side == "R" else x
        e = np.sqrt(((y - breast.cy) / breast.ay) ** 2 + (dx / breast.ax) ** 2)
        self.inside = np.clip((1 - e) / 0.05, 0, 1).astype(np.float32)  # soft skin line
        thickness = (0.8 + 0.2 * np.sqrt(np.clip(1 - e * e, 0, 1))).astype(np.float32)
        static = self.inside * np.float32(breast.base) * thickness
        if breast.pect_w > 0:
            pect = np.clip((1 - dx / breast.pect_w - y / breast.pect_h) / 0.05, 0, 1)
            static = static + self.inside * np.float32(breast.pect_amp) * pect.astype(np.float32)
        self.static = static.astype(np.float32)
        self.noise_sd = self.inside * np.float32(breast.noise)
        self.amp = np.float32(breast.amp)

        # Texture: four octaves of smoothed noise on coarse grids, resampled per frame, so
        # that tissue changes slowly from frame to frame and costs little at full size.
        fine_rows = min(160, rows)
        self.fine = (fine_rows, max(2, min(cols, _round_half_up(fine_rows * cols / rows))))
        self.octaves = []
        w0, w1, w2, w3 = _OCTAVE_WEIGHTS
        for grid_rows, nz, weight in (
            (6, 3, w0), (20, max(2, n // 8 + 2), w1), (64, max(2, n // 3 + 2), w2),
            (160, max(2, n // 2 + 2), w3),
        ):
            gr = min(grid_rows, self.fine[0])
            gc = max(2, min(self.fine[1], _round_half_up(gr * cols / rows)))
            grid = rng.standard_normal((nz, gr, gc), dtype=np.float32) * np.float32(weight)
            self.octaves.append((grid, _Resizer((gr, gc), self.fine)))
        self.to_frame = _Resizer(self.fine, (rows, cols))
        self.templates = [_lesion_template(les, min(rows, cols)) for les in vol.lesions]

    def frame(self, z: int) -> np.ndarray:
        """Stored frame ``z`` (uint16), rotated by 180 degrees where the volume is stored so."""
        vol, n = self.vol, self.vol.n_frames
        low = np.zeros(self.fine, dtype=np.float32)
        for grid, up in self.octaves:
            low += up(_interp_z(grid, z, n))
        frame = self.static + self.inside * (self.amp * self.to_frame(low))
        noise = np.random.default_rng([self.seed, 3, vol.index, z]).standard_normal(
            (self.rows, self.cols), dtype=np.float32
        )
        frame += self.noise_sd * noise
        for les, tpl in zip(vol.lesions, self.templates):
            dz = z - les.slice
            if abs(dz) > 4:
                continue
            weight = np.float32(les.amplitude * np.exp(-0.5 * (dz / les.sigma_z) ** 2))
            ys, xs = slice(les.y, les.y + les.height), slice(les.x, les.x + les.width)
            frame[ys, xs] += weight * tpl * self.inside[ys, xs]
        np.clip(frame, 0, _MAX_VALUE, out=frame)
        frame += np.float32(0.5)
        out = frame.astype(np.uint16)
        if vol.rotated:
            out = np.ascontiguousarray(out[::-1, ::-1])
        return out


def _render_frames(vol: _Volume, rows: int, cols: int, seed: int) -> Iterator[np.ndarray]:
    """Yield the volume's stored frames in order."""
    renderer = _Renderer(vol, rows, cols, seed)
    for z in range(vol.n_frames):
        yield renderer.frame(z)


def _lesion_visibility(volumes: list[_Volume], rows: int, cols: int) -> dict[str, Any]:
    """How visible the lesions are: size relative to the frame, contrast relative to the window.

    A slice is letterboxed to a square on its long side, so a lesion whose box side is a
    fraction ``f`` of the frame's long side spans about ``f * N`` pixels of an ``N``-pixel
    image. Contrast is the lesion's peak brightening (on its boxed slice) as a share of the
    volume's display window, which is what survives the 8-bit conversion (x 255 = grey
    levels), and in units of the tissue texture's standard deviation.
    """
    long_side = max(rows, cols)
    size, window, texture = [], [], []
    for vol in volumes:
        assert vol.breast is not None
        width = _window(vol)[1]
        for les in vol.lesions:
            size.append(min(les.width, les.height) / long_side)
            window.append(min(1.0, les.amplitude / width))
            texture.append(les.amplitude / (vol.breast.amp * _TEXTURE_SD))
    if not size:
        return {"lesions": 0, "note": "no lesions (no benign or cancer volume)"}

    def spread(values: list[float], digits: int = 3) -> dict[str, float]:
        return {"min": round(min(values), digits), "median": round(float(np.median(values)), digits),
                "max": round(max(values), digits)}

    px = {str(n): round(min(size) * n, 1) for n in _REPORTED_SIDES}
    return {
        "lesions": len(size),
        "size_of_frame": spread(size),
        "smallest_px_at": px,
        "contrast_of_window": spread(window),
        "contrast_to_texture": spread(texture, 1),
        "note": (
            f"lesions span {100 * min(size):.0f}-{100 * max(size):.0f}% of the frame's long side (the "
            f"smallest about {px['64']:g} px across in a 64 px image, {px['224']:g} px in a 224 px one) and "
            f"brighten their tissue by {100 * min(window):.0f}-{100 * max(window):.0f}% of the display window "
            f"({min(texture):.1f}-{max(texture):.1f} times the tissue texture's standard deviation): plainly "
            "visible, unlike many real ones"
        ),
    }


def _window(vol: _Volume) -> tuple[int, int]:
    """Window centre / width covering the volume's tissue and lesions."""
    b = vol.breast
    assert b is not None
    lo = max(0.0, 0.8 * b.base - 2.0 * b.amp)
    hi = min(float(_MAX_VALUE), b.base + 2.0 * b.amp + b.pect_amp + 300.0)
    return _round_half_up((lo + hi) / 2), _round_half_up(hi - lo)


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------

_FIRST = ("Jane", "Mary", "Linda", "Susan", "Karen", "Nancy", "Betty", "Helen", "Sandra", "Donna",
          "Carol", "Ruth", "Sharon", "Laura", "Sarah", "Kimberly", "Deborah", "Lisa", "Angela")
_LAST = ("Doe", "Roe", "Smith", "Moe", "Poe", "Lowe", "Stone", "Hart", "Fields", "Brook", "Vale",
         "Marsh", "Glenn", "Wood", "Lake", "Hill", "Ford", "Shaw")
_TOMO = ("tomosynthesis", "Tomosynthesis", "TOMOSYNTHESIS")
_BIRADS_WORDS = {
    0: "incomplete", 1: "negative", 2: "benign", 3: "probably benign", 4: "suspicious",
    5: "highly suggestive of malignancy",
}
_CANCER_FINDINGS = (
    "invasive ductal carcinoma, Nottingham grade {grade}",
    "ductal carcinoma in situ (DCIS), high nuclear grade",
    "DCIS, intermediate nuclear grade, cribriform type",
    "invasive lobular carcinoma",
    "invasive ductal carcinoma with associated DCIS",
)
_BENIGN_FINDINGS = (
    "fibroadenoma",
    "benign fibrocystic changes",
    "benign breast tissue, negative for malignancy",
    "fibroadenoma; no evidence of carcinoma",
    "usual ductal hyperplasia with benign fibrocystic changes; negative for malignancy",
)


def _birads_text(rng: np.random.Generator, category: int) -> str:
    style = int(rng.integers(0, 5))
    if style == 0:
        return f"BI-RADS {category}"
    if style == 1:
        return f"BIRADS: {category}"
    if style == 2:
        return f"Bi-Rads category {category}"
    if style == 3:
        return f"BI-RADS: {category} - {_BIRADS_WORDS[category]}"
    return f"BI-RADS Category {category}: {_BIRADS_WORDS[category].capitalize()}"


def _choice(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(0, len(options)))]


def _radiology_text(
    rng: np.random.Generator, header: str, cohort: str, side: str | None, *, modality: str = ""
) -> str:
    side_word = {"l": "left", "r": "right"}.get(side or "", "left")
    clock = int(rng.integers(1, 13))
    if cohort == "normal":
        category = int(rng.integers(1, 3))
        findings = _choice(rng, (
            "No suspicious masses, calcifications or architectural distortion.",
            "Scattered areas of fibroglandular density. No mammographic evidence of malignancy.",
            "Stable benign-appearing calcifications. No suspicious findings.",
        ))
    elif cohort == "actionable":
        category = int(_choice(rng, (0, 3, 4)))
        findings = (
            f"Focal asymmetry in the {side_word} breast at {clock} o'clock. "
            + _choice(rng, ("Additional imaging recommended.", "Short-interval follow-up advised.",
                            "Diagnostic evaluation recommended."))
        )
    else:
        category = 4 if rng.random() < (0.8 if cohort == "benign" else 0.4) else 5
        shape = _choice(rng, (
            "Irregular spiculated mass", "Oval circumscribed mass", "Irregular mass",
            "Mass with architectural distortion",
        ))
        findings = (
            f"{shape} in the {side_word} breast at {clock} o'clock, "
            f"{int(rng.integers(2, 12))} cm from the nipple, "
            f"measuring {int(rng.integers(6, 35))} mm. "
            "Tissue sampling recommended."
        )
    if modality:
        exam = modality
    else:
        t = _choice(rng, _TOMO)
        exam = _choice(rng, (
            f"Bilateral screening digital breast {t} (DBT).",
            f"{t} (3D mammography), bilateral, with synthesized 2D views.",
            f"Screening mammogram with digital breast {t}.",
        ))
    return (
        f"RADIOLOGY REPORT\n{header}\nExam: {exam}\nFindings: {findings}\n"
        f"Impression: {_birads_text(rng, category)}"
    )


def _pathology_text(rng: np.random.Generator, header: str, cohort: str, side: str) -> str:
    side_word = {"l": "left", "r": "right"}[side]
    procedure = _choice(rng, ("ultrasound-guided core needle biopsy", "stereotactic biopsy",
                              "excisional biopsy", "lumpectomy"))
    finding = _choice(rng, _CANCER_FINDINGS if cohort == "cancer" else _BENIGN_FINDINGS)
    finding = finding.format(grade=int(rng.integers(1, 4)))
    return (
        f"SURGICAL PATHOLOGY REPORT\n{header}\n"
        f"Specimen: {side_word.capitalize()} breast, {int(rng.integers(1, 13))} o'clock, "
        f"{procedure}.\n"
        f"Final diagnosis: {side_word} breast, {procedure}: {finding}."
    )


def _date_between(rng: np.random.Generator, start: _dt.date, end: _dt.date) -> _dt.date:
    return start + _dt.timedelta(days=int(rng.integers(0, (end - start).days + 1)))


def _build_reports(
    rng: np.random.Generator, patients: list[_Patient]
) -> list[tuple[str, str, str, str, str]]:
    """Rows (patient_id, study_uid, report_type, report_date, text), before ids are given."""
    start, end = REPORT_DATE_RANGE
    rows: list[tuple[str, str, str, str, str]] = []
    headers: dict[str, str] = {}
    for p in patients:
        dob = _dt.date(1935, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 40 * 365)))
        name = f"{_choice(rng, _FIRST)} Synthetic-{_choice(rng, _LAST)}"
        mrn = int(rng.integers(10_000_000, 100_000_000))
        headers[p.patient_id] = f"Patient: {name}, DOB {dob.isoformat()}\nMRN: {mrn}"
        # Two studies sit about a year apart; a positive study leaves room for its pathology.
        last_positive = end - _dt.timedelta(days=120)
        first = _date_between(
            rng, start, end - _dt.timedelta(days=520 if len(p.studies) > 1 else 120)
        )
        for k, study in enumerate(p.studies):
            study.date = first + _dt.timedelta(days=k * int(rng.integers(300, 401)))
            if study.cohort != "normal" and study.date > last_positive:
                study.date = last_positive
            header = headers[p.patient_id]
            rows.append((p.patient_id, study.study_uid, "radiology", study.date.isoformat(),
                         _radiology_text(rng, header, study.cohort, study.side)))
            if study.cohort in ("benign", "cancer"):
                assert study.side is not None
                path_date = study.date + _dt.timedelta(days=int(rng.integers(5, 121)))
                rows.append((p.patient_id, study.study_uid, "pathology", path_date.isoformat(),
                             _pathology_text(rng, header, study.cohort, study.side)))

    # Distractors: each fails exactly one of the filter's rules, on a real patient and study.
    all_studies = [(p, s) for p in patients for s in p.studies]

    def some_study() -> tuple[_Patient, _Study]:
        return all_studies[int(rng.integers(0, len(all_studies)))]

    n_out = max(2, _round_half_up(0.03 * len(all_studies)))
    for i in range(n_out):
        p, s = some_study()
        if i == 0:
            date = end + _dt.timedelta(days=1)  # the day after the range: boundary check
        elif i == 1:
            date = start - _dt.timedelta(days=1)
        elif i % 2:
            date = _date_between(rng, _dt.date(2010, 1, 1), start - _dt.timedelta(days=1))
        else:
            date = _date_between(rng, end + _dt.timedelta(days=1), _dt.date(2020, 12, 31))
        rows.append((p.patient_id, s.study_uid, "radiology", date.isoformat(),
                     _radiology_text(rng, headers[p.patient_id], "normal", None)))
    n_other = max(2, _round_half_up(0.03 * len(all_studies)))
    for _ in range(n_other):
        p, s = some_study()
        modality = _choice(rng, (
            "Bilateral breast ultrasound.", "Breast MRI with and without contrast.",
            "Diagnostic 2D digital mammogram, left.", "Targeted breast ULTRASOUND.",
        ))
        rows.append((p.patient_id, s.study_uid, "radiology",
                     _date_between(rng, start, end).isoformat(),
                     _radiology_text(rng, headers[p.patient_id], "normal", None,
                                     modality=modality)))
    p, s = some_study()
    rows.append((p.patient_id, s.study_uid, "pathology", _date_between(rng, start, end).isoformat(),
                 f"SURGICAL PATHOLOGY REPORT\n{headers[p.patient_id]}\n"
                 "Specimen: Colon, sigmoid, endoscopic biopsy.\n"
                 "Final diagnosis: tubular adenoma; negative for high-grade dysplasia."))
    p, s = some_study()
    rows.append((p.patient_id, s.study_uid, "radiology", "2016-13-45",
                 _radiology_text(rng, headers[p.patient_id], "normal", None)))
    p, s = some_study()
    rows.append((p.patient_id, s.study_uid, "cardiology",
                 _date_between(rng, start, end).isoformat(),
                 f"ECHOCARDIOGRAM REPORT\n{headers[p.patient_id]}\n"
                 "Transthoracic echocardiogram. Normal left ventricular size and systolic "
                 "function. Ejection fraction 60%."))
    return rows


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _plan(
    *, patients: int, seed: int, rows: int, cols: int, frames: tuple[int, int],
    positive_fraction: float | None,
) -> tuple[list[_Patient], list[_Volume], dict[str, Any]]:
    rng = np.random.default_rng([seed, 0])
    extras: dict[str, Any] = {}

    pool = max(5060, 2 * patients)
    numbers = np.sort(rng.choice(pool, size=patients, replace=False) + 1)
    counts = _cohort_counts(patients, positive_fraction)
    cohort_list = [c for c in reversed(COHORTS) for _ in range(counts[c])]
    order = rng.permutation(patients)
    people = [
        _Patient(number=int(num), patient_id=f"DBT-P{int(num):05d}",
                 cohort=cohort_list[int(order[i])])
        for i, num in enumerate(numbers)
    ]
    for i, p in enumerate(people):
        study = _Study(patient_index=i, cohort=p.cohort, extra=False)
        if p.cohort != "normal":
            study.side = "l" if rng.random() < 0.5 else "r"
        p.studies.append(study)

    # A second, normal study for about 10% of patients: one positive patient among them.
    n_two = _round_half_up(0.1 * patients)
    if patients >= 5:
        n_two = max(1, n_two)
    positives = [i for i, p in enumerate(people) if p.cohort in ("benign", "cancer")]
    must = [int(rng.choice(positives))] if positives and n_two else []
    for i in sorted(_pick(rng, patients, n_two, must)):
        extra = _Study(patient_index=i, cohort="normal", extra=True)
        if rng.random() < 0.5:
            people[i].studies.append(extra)
        else:
            people[i].studies.insert(0, extra)
    extras["two_study_patients"] = sum(len(p.studies) > 1 for p in people)

    # Most severe flag wins: one cancer study whose lesion-side rows also say Benign.
    cancers = [i for i, p in enumerate(people) if p.cohort == "cancer"]
    if cancers:
        chosen = people[int(rng.choice(cancers))]
        next(s for s in chosen.studies if not s.extra).double_flag = True

    studies = [s for p in people for s in p.studies]
    snums = np.sort(rng.choice(max(5610, 2 * len(studies)), size=len(studies), replace=False) + 1)
    for s, num in zip(studies, snums):
        s.number = int(num)
        s.study_uid = f"DBT-S{int(num):05d}"

    # A few normal studies miss one view.
    normal_studies = [k for k, s in enumerate(studies) if s.cohort == "normal"]
    n_missing = _round_half_up(0.05 * patients)
    if patients >= 10:
        n_missing = max(1, n_missing)
    for k in sorted(_pick(rng, len(normal_studies), n_missing)):
        s = studies[normal_studies[k]]
        dropped = VIEWS[int(rng.integers(0, len(VIEWS)))]
        s.views = [v for v in VIEWS if v != dropped]
    extras["missing_view_studies"] = sum(len(s.views) < 4 for s in studies)

    _split_patients(rng, people)

    volumes: list[_Volume] = []
    for p in people:
        for s in p.studies:
            study_folder = f"01-01-2000-{s.study_uid}-{int(rng.integers(10000, 100000)):05d}"
            series_numbers = rng.choice(90000, size=len(s.views), replace=False) + 10000
            for view, series in zip(s.views, series_numbers):
                flagged = s.side is not None and view[0] == s.side
                if not flagged:
                    flags = (1, 0, 0, 0)
                elif s.cohort == "actionable":
                    flags = (0, 1, 0, 0)
                elif s.cohort == "benign":
                    flags = (0, 0, 1, 0)
                else:
                    flags = (0, 0, 1 if s.double_flag else 0, 1)
                volumes.append(_Volume(
                    index=len(volumes), patient_id=p.patient_id, patient_number=p.number,
                    study_uid=s.study_uid, view=view, split=p.split,
                    n_frames=int(rng.integers(frames[0], frames[1] + 1)), flags=flags,
                    study_folder=study_folder, series_number=int(series),
                    series_suffix=int(rng.integers(10000, 100000)),
                ))

    # Lesions: one box per positive volume, sometimes two.
    positive = [v.index for v in volumes if v.flags[2] or v.flags[3]]
    for i in positive:
        volumes[i].n_lesions = 2 if rng.random() < 0.2 else 1
    if len(positive) >= 4 and all(volumes[i].n_lesions == 1 for i in positive):
        volumes[int(rng.choice(positive))].n_lesions = 2

    n_vol = len(volumes)
    n_na = max(1 if n_vol >= 8 else 0, _round_half_up(0.2 * n_vol))
    for i in _pick(rng, n_vol, n_na, [int(rng.choice(positive))] if positive else []):
        volumes[i].na_drift = True
    n_rot = max(1 if n_vol >= 8 else 0, _round_half_up(0.25 * n_vol))
    for i in _pick(rng, n_vol, n_rot, [int(rng.choice(positive))] if positive else []):
        volumes[i].rotated = True
    n_wrong = max(1 if n_vol >= 20 else 0, _round_half_up(0.05 * n_vol))
    for i in _pick(rng, n_vol, n_wrong):
        volumes[i].wrong_laterality = True

    for v in volumes:
        cls = "cancer" if v.flags[3] else "benign"
        ad_rng = np.random.default_rng([seed, 2, v.index])
        classes = [(cls, int(ad_rng.random() < 0.15)) for _ in range(v.n_lesions)]
        _plan_image(v, rows, cols, seed, classes)
    return people, volumes, extras


def _volume_dataset(vol: _Volume, rows: int, cols: int) -> Dataset:
    """The header of a generated volume (wrong FrameLaterality where the plan says so)."""
    centre, width = _window(vol)
    other = "L" if vol.side == "R" else "R"
    return _dbt_dataset(
        n=vol.n_frames, rows=rows, cols=cols, patient_id=vol.patient_id,
        study_uid=vol.study_uid, view=vol.view, window_center=centre, window_width=width,
        frame_laterality=other if vol.wrong_laterality else vol.side, bits_stored=10,
        photometric="MONOCHROME2", window_location="shared",
    )


def _encode_chunk(args: tuple[_Volume, int, int, int, int, int]) -> list[bytes]:
    """Draw and encode frames ``z0 <= z < z1`` of one volume (runs in a worker process)."""
    vol, rows, cols, seed, z0, z1 = args
    renderer = _Renderer(vol, rows, cols, seed)
    encode = _frame_encoder(_volume_dataset(vol, rows, cols), UID(JPEG2000Lossless))
    return [encode(renderer.frame(z)) for z in range(z0, z1)]


#: Pixels per work item: a small volume is one item, a full-size one about five frames.
_CHUNK_PIXELS = 24_000_000
#: Below this many pixels in all, starting worker processes costs more than it saves.
_PARALLEL_PIXELS = 30_000_000


def _default_workers(total_pixels: int, items: int) -> int:
    if total_pixels < _PARALLEL_PIXELS:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, items, 8))


def _write_volumes(
    volumes: list[_Volume], root: Path, rows: int, cols: int, seed: int, workers: int | None
) -> None:
    """Write every volume's DICOM; frames are encoded in worker processes when it pays."""
    per = max(1, _CHUNK_PIXELS // (rows * cols))
    items = [
        (v.index, z0, min(z0 + per, v.n_frames))
        for v in volumes for z0 in range(0, v.n_frames, per)
    ]
    if workers is None:
        workers = _default_workers(sum(v.n_frames for v in volumes) * rows * cols, len(items))
    args = [(volumes[i], rows, cols, seed, z0, z1) for i, z0, z1 in items]

    def results() -> Iterator[list[bytes]]:
        if workers <= 1:
            yield from map(_encode_chunk, args)
            return
        # "spawn": the caller may be a threaded Prefect worker, where fork is unsafe.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            yield from pool.map(_encode_chunk, args)

    parts: list[bytes] = []
    for (i, _z0, z1), chunk in zip(items, results()):
        parts.extend(chunk)
        if z1 == volumes[i].n_frames:  # chunks come back in order: the volume is complete
            vol = volumes[i]
            _save_encoded(_volume_dataset(vol, rows, cols), root / vol.disk_path, parts,
                          UID(JPEG2000Lossless))
            parts = []


def generate_dataset(
    out: str | os.PathLike,
    *,
    patients: int = 40,
    seed: int = 0,
    rows: int = 256,
    columns: int = 196,
    full_size: bool = False,
    frames: tuple[int, int] | None = None,
    positive_fraction: float | None = None,
    reports: bool = True,
) -> dict:
    """Write a synthetic dataset shaped like Duke's BCS-DBT collection under ``out``.

    Usage at a terminal: ``tomoflow synth OUT --patients 40 --seed 0 [--full-size]``.

    What is written (names and columns as in the real release):

    * ``BCS-DBT file-paths-train-v2.csv``, ``BCS-DBT labels-train-v2.csv``,
      ``BCS-DBT boxes-train-v2.csv`` (train: a space after ``BCS-DBT``) and
      ``BCS-DBT-file-paths-validation-v2.csv`` ... ``BCS-DBT-boxes-test-v2.csv``
      (validation and test: a hyphen). Patients are split about 80/8/12, stratified by
      cohort; every split has a boxes file, header-only when it has no positives.
    * ``Breast-Cancer-Screening-DBT/<PatientID>/01-01-2000-<StudyUID>-NNNNN/``
      ``NNNNN.000000-NNNNN/1-1.dcm``: one multi-frame JPEG 2000 DBT file per view, 10 bits
      stored, frame counts varying per volume. About 20% of the series folders are named
      ``NNNNN.000000-NA-NNNNN`` on disk while the CSV says ``NNNNN.000000-NNNNN``;
      ``classic_path`` (UID folders, the UIDs written in the file) never exists on disk.
    * ``reports.csv`` (``reports=True``): columns ``report_id, patient_id, study_uid,
      report_type, report_date, text``. Per study a ``radiology`` report (2014-01-01 to
      2018-01-30, mentions tomosynthesis, a BI-RADS category that fits the cohort) and, for
      benign and cancer studies, a ``pathology`` report 5 to 120 days later naming the side.
      Distractors: radiology out of the date range or not tomosynthesis, pathology not about
      the breast, a malformed date (``2016-13-45``), an unknown type (``cardiology``); each
      is linked to a real patient and study. Texts carry a fake name and birth date, and
      contain newlines (quoted CSV fields).

    Box coordinates and ``Slice`` are in the oriented frame of Duke's reader: breast against
    the right edge for R views and the left edge for L views, air elsewhere (exactly 0).
    About 25% of the volumes are stored rotated by 180 degrees, so the reader's rule (edge
    column sums) must rotate them back; about 5% carry the other side in FrameLaterality
    (and ImageLaterality); a few normal studies miss one view; one cancer study's lesion-side
    rows also say Benign (most severe flag wins; its boxes say ``cancer``).

    Frames are encoded in worker processes ("spawn") when there is enough work, so a script
    that calls this must guard its entry point with ``if __name__ == "__main__":``.

    Args:
        out: Output folder (created; existing files with the same names are overwritten,
            nothing else is removed).
        patients: Number of patients (1 to 99999). Cohorts: cancer ``max(2, 1.6%)``, benign
            ``max(2, 2%)``, actionable ``max(1, 5%)``, the rest normal; about 10% of patients
            have a second, normal study.
        seed: Seed of every random choice; the same seed gives the same bytes in every file.
        rows: Frame rows (at least 32); ignored with ``full_size``.
        columns: Frame columns (at least 32); ignored with ``full_size``.
        full_size: Frames of 2457 x 1890 as in the collection.
        frames: Inclusive (min, max) frame count per volume; default (16, 32), or (49, 95)
            with ``full_size``.
        positive_fraction: If given, this fraction of patients is positive, split about evenly
            between benign and cancer (overrides the default cohort sizes).
        reports: Also write ``reports.csv``.

    Returns:
        A JSON-able summary: ``out``, ``seed``, ``patients``, ``studies``, ``volumes``, ``rows``,
        ``columns``, ``frames``, ``cohort_patients``, ``cohort_studies``, ``cohort_volumes``
        (by most severe flag), ``positive_volumes``, ``boxes``, ``double_flag_rows``,
        ``two_study_patients``, ``missing_view_studies``, ``splits`` (patients and volumes
        per split), ``csv`` (file names per split and kind), ``reports`` (path or None),
        ``report_rows``, ``na_drift_volumes``, ``rotated_volumes``,
        ``wrong_laterality_volumes``, ``lesion_visibility`` (``lesions``, ``size_of_frame``:
        box side / frame's long side, ``smallest_px_at``: pixels across the smallest lesion in
        a 64, 96 and 224 px image, ``contrast_of_window``: peak brightening / display window
        width, ``contrast_to_texture``: peak brightening / tissue texture SD, each as min,
        median, max; and a one-line ``note``) and ``details`` (the ``PatientID/StudyUID/View``
        keys of the ``na_drift``, ``rotated``, ``wrong_laterality`` volumes).

    Raises:
        ValueError: A bad argument, named with the allowed values.
    """
    if isinstance(patients, bool) or not isinstance(patients, int) or not 1 <= patients <= 99999:
        raise ValueError(f"patients={patients!r}: expected an integer from 1 to 99999")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected a non-negative integer")
    if full_size:
        rows, columns = FULL_ROWS, FULL_COLUMNS
    if rows < MIN_FRAME_SIDE or columns < MIN_FRAME_SIDE:
        raise ValueError(
            f"rows={rows}, columns={columns}: JPEG 2000 needs at least {MIN_FRAME_SIDE} "
            "pixels a side"
        )
    if frames is None:
        frames = (49, 95) if full_size else (16, 32)
    frames = (int(frames[0]), int(frames[1]))
    if not 1 <= frames[0] <= frames[1]:
        raise ValueError(f"frames={frames}: expected (min, max) with 1 <= min <= max")
    if positive_fraction is not None and not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction={positive_fraction!r}: expected a value in [0, 1]")

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    people, volumes, extras = _plan(
        patients=patients, seed=seed, rows=rows, cols=columns, frames=frames,
        positive_fraction=positive_fraction,
    )

    _write_volumes(volumes, root, rows, columns, seed, _WORKERS)

    names: dict[str, dict[str, str]] = {}
    n_boxes = 0
    for split in SPLITS:
        vols = [v for v in volumes if v.split == split]
        names[split] = {
            "file_paths": csv_file_name("file-paths", split),
            "labels": csv_file_name("labels", split),
            "boxes": csv_file_name("boxes", split),
        }
        atomic_write_text(root / names[split]["file_paths"], _csv_text(
            FILE_PATHS_COLUMNS,
            ((v.patient_id, v.study_uid, v.view, v.descriptive_path, v.classic_path) for v in vols),
        ))
        atomic_write_text(root / names[split]["labels"], _csv_text(
            LABELS_COLUMNS, ((v.patient_id, v.study_uid, v.view, *v.flags) for v in vols),
        ))
        box_rows = [
            (v.patient_id, v.study_uid, v.view, v.patient_number, les.slice, les.x, les.y,
             les.width, les.height, les.cls, les.ad, v.n_frames)
            for v in vols for les in v.lesions
        ]
        n_boxes += len(box_rows)
        atomic_write_text(root / names[split]["boxes"], _csv_text(BOXES_COLUMNS, box_rows))

    report_path: str | None = None
    report_rows = 0
    if reports:
        rows_ = _build_reports(np.random.default_rng([seed, 4]), people)
        order = np.random.default_rng([seed, 5]).permutation(len(rows_))
        table = [(f"R{k + 1:06d}", *rows_[int(j)]) for k, j in enumerate(order)]
        atomic_write_text(root / REPORTS_FILE, _csv_text(REPORT_COLUMNS, table))
        report_path = str(root / REPORTS_FILE)
        report_rows = len(table)

    def severity(flags: tuple[int, ...]) -> str:
        return COHORTS[max(i for i, f in enumerate(flags) if f)]

    studies = [s for p in people for s in p.studies]
    return {
        "out": str(root),
        "seed": seed,
        "patients": len(people),
        "studies": len(studies),
        "volumes": len(volumes),
        "rows": rows,
        "columns": columns,
        "frames": list(frames),
        "cohort_patients": {c: sum(p.cohort == c for p in people) for c in COHORTS},
        "cohort_studies": {c: sum(s.cohort == c for s in studies) for c in COHORTS},
        "cohort_volumes": {c: sum(severity(v.flags) == c for v in volumes) for c in COHORTS},
        "positive_volumes": sum(bool(v.flags[2] or v.flags[3]) for v in volumes),
        "boxes": n_boxes,
        "double_flag_rows": sum(sum(v.flags) > 1 for v in volumes),
        "two_study_patients": extras["two_study_patients"],
        "missing_view_studies": extras["missing_view_studies"],
        "splits": {
            split: {
                "patients": sum(p.split == split for p in people),
                "volumes": sum(v.split == split for v in volumes),
            }
            for split in SPLITS
        },
        "csv": names,
        "reports": report_path,
        "report_rows": report_rows,
        "na_drift_volumes": sum(v.na_drift for v in volumes),
        "rotated_volumes": sum(v.rotated for v in volumes),
        "wrong_laterality_volumes": sum(v.wrong_laterality for v in volumes),
        "lesion_visibility": _lesion_visibility(volumes, rows, columns),
        "details": {
            "na_drift": [v.key for v in volumes if v.na_drift],
            "rotated": [v.key for v in volumes if v.rotated],
            "wrong_laterality": [v.key for v in volumes if v.wrong_laterality],
        },
    }
