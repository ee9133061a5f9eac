"""What ``tomoflow score`` scores: every volume the BCS-DBT file-paths CSVs list, else every DICOM found.

No labels, boxes or reports are read. With file-paths CSVs under the data root, each listed
volume is found on disk as prepare finds it (:class:`tasks.prepare.locate.VolumeResolver`)
and keeps the CSV's ids. Without them, every DICOM file under the folder is a candidate and
is identified from its header: ``PatientID``, ``StudyInstanceUID`` and the view, from the
View Code Sequence (cranio-caudal, medio-lateral oblique) or ``ViewPosition``, with the side
from ``ImageLaterality`` (else the Frame Laterality of the functional groups).

Every listed or found volume gets a row; one that cannot be scored carries its ``status``
(``missing``, ``unreadable``, ``not a breast image``, ``no frames``, ``unknown view``) and
the rest are scored regardless.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

#: Columns of the volume list, in order.
VOLUME_LIST_COLUMNS = ("patient_id", "study_uid", "view", "path", "listed_by", "status")

#: SNOMED / DICOM codes and meanings of the two DBT views.
_VIEW_CODES = {"R-10242": "cc", "399162004": "cc", "R-10226": "mlo", "399368009": "mlo"}
_VIEW_WORDS = (("cranio-caudal", "cc"), ("craniocaudal", "cc"), ("medio-lateral oblique", "mlo"),
               ("mediolateral oblique", "mlo"))
_DICM_AT = 128


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` ends in ``.dcm`` or holds the DICOM Part 10 ``DICM`` marker."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(_DICM_AT)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def find_dicoms(root: Path) -> list[Path]:
    """Every DICOM file under ``root`` (hidden folders skipped), sorted."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(p for p in (Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
                     if is_dicom_file(p))
    return found


def check_inputs(data_root: str | os.PathLike[str]) -> None:
    """Stop at once (one line) when ``data_root`` is not a folder or holds neither a file-paths CSV nor a DICOM.

    Cheap: it stops at the first DICOM file found.
    """
    from tasks.prepare.bcs_csv import find_bcs_csvs

    root = Path(data_root)
    if not root.is_dir():
        raise ValueError(f"--data-root {root}: not a folder; pass the folder holding the studies to score")
    try:
        find_bcs_csvs(root, require_labels=False)
        return
    except ValueError:
        pass
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(is_dicom_file(Path(dirpath) / f) for f in filenames if not f.startswith(".")):
            return
    raise ValueError(f"--data-root {root}: no DICOM file found (no .dcm file, and none with the DICM marker) and no "
                     "BCS-DBT file-paths CSV; pass the folder holding the studies")


def _view_of(ds: Any) -> str | None:
    """``lcc``/``lmlo``/``rcc``/``rmlo`` from the header, or None."""
    kind = None
    for item in ds.get("ViewCodeSequence") or []:
        code = str(item.get("CodeValue", "")).strip()
        meaning = str(item.get("CodeMeaning", "")).strip().lower()
        kind = _VIEW_CODES.get(code) or next((v for w, v in _VIEW_WORDS if w in meaning), None)
        if kind:
            break
    if kind is None:
        position = str(ds.get("ViewPosition", "")).strip().upper()
        kind = {"CC": "cc", "MLO": "mlo"}.get(position)
    side = str(ds.get("ImageLaterality", "")).strip().upper()
    if side not in ("L", "R"):
        for group in (ds.get("SharedFunctionalGroupsSequence") or [])[:1]:
            for anatomy in group.get("FrameAnatomySequence") or []:
                side = str(anatomy.get("FrameLaterality", "")).strip().upper()
    if kind is None or side not in ("L", "R"):
        return None
    return side.lower() + kind


def header_row(path: Path) -> dict[str, Any]:
    """One volume-list row from a DICOM file's header (``status`` None when it can be scored)."""
    import pydicom

    row: dict[str, Any] = {"patient_id": None, "study_uid": None, "view": None, "path": str(path),
                           "listed_by": "header", "status": None}
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable header is this file's status
        row["status"] = f"unreadable: the DICOM header could not be read ({type(exc).__name__})"
        return row
    row["patient_id"] = str(ds.get("PatientID", "") or "").strip() or None
    row["study_uid"] = str(ds.get("StudyInstanceUID", "") or "").strip() or None
    row["view"] = _view_of(ds)
    modality = str(ds.get("Modality", "") or "").strip()
    frames = ds.get("NumberOfFrames")
    if modality != "MG":
        row["status"] = f"not a breast image: Modality {modality or 'missing'}, not MG"
    elif "Rows" not in ds or "Columns" not in ds:
        row["status"] = "no frames: the file holds no image (no Rows / Columns)"
    elif frames is not None and int(frames or 0) < 1:
        row["status"] = "no frames: Number of Frames is 0"
    elif row["view"] is None:
        row["status"] = ("unknown view: no View Code Sequence or View Position (CC, MLO) with an Image "
                         "Laterality (L, R) in the header")
    if row["patient_id"] is None:
        row["patient_id"] = f"file:{path.name}"
    if row["study_uid"] is None:
        row["study_uid"] = f"file:{path.name}"
    return row


def _csv_rows(data_root: Path, file_paths: pd.DataFrame) -> list[dict[str, Any]]:
    from tasks.prepare.locate import VolumeResolver

    resolver = VolumeResolver(data_root)
    rows = []
    for rec in file_paths.to_dict("records"):
        ids = (str(rec["patient_id"]), str(rec["study_uid"]), str(rec["view"]))
        path, how = resolver.resolve(rec.get("descriptive_path"), rec.get("classic_path"), ids[0], study_uid=ids[1])
        status = None if path is not None else (how if how.startswith("outside-data-root") else f"missing: {how}")
        rows.append({"patient_id": ids[0], "study_uid": ids[1], "view": ids[2],
                     "path": None if path is None else str(path), "listed_by": "file-paths CSV", "status": status})
    return rows


def list_volumes(data_root: str | os.PathLike[str]) -> tuple[pd.DataFrame, str]:
    """Every volume to score under ``data_root``: ``(table, source)``.

    Returns:
        The table (:data:`VOLUME_LIST_COLUMNS`, one row per listed or found volume, in
        listing order) and where it came from (``"file-paths CSV"`` or ``"header"``).

    Raises:
        ValueError: ``data_root`` is not a folder, or holds no CSV-listed volume and no DICOM file.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise ValueError(f"--data-root {root}: not a folder; pass the folder holding the studies to score")
    from tasks.prepare.bcs_csv import find_bcs_csvs, load_bcs_tables

    try:
        find_bcs_csvs(root, require_labels=False)
        has_csv = True
    except ValueError:
        has_csv = False
    if has_csv:
        rows, source = _csv_rows(root, load_bcs_tables(root, require_labels=False).file_paths), "file-paths CSV"
    else:
        rows, source = [header_row(p) for p in find_dicoms(root)], "header"
    if not rows:
        raise ValueError(f"--data-root {root}: no DICOM file found (no .dcm file, and none with the DICM marker) "
                         "and no BCS-DBT file-paths CSV; pass the folder holding the studies")
    return pd.DataFrame(rows, columns=list(VOLUME_LIST_COLUMNS)), source
