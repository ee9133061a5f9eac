"""The collection's shape as the generator writes it: sizes, CSV names and columns, UIDs.

These are facts of Duke's BCS-DBT release on TCIA, written the way the real files spell
them; the pipeline's own names (views, cohorts, splits) come from :mod:`tasks.core.schema`.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
from collections.abc import Iterable, Sequence

from pydicom.uid import generate_uid

from tasks.core.schema import SPLITS

BREAST_TOMOSYNTHESIS_STORAGE = "1.2.840.10008.5.1.4.1.1.13.1.3"

#: Fixed UID root so that the same seed gives the same bytes.
UID_PREFIX = "1.2.826.0.1.3680043.10.1234."

#: Frame size of the real collection (other widths occur there too).
FULL_ROWS = 2457
FULL_COLUMNS = 1890
#: JPEG 2000 (OpenJPEG's default six resolution levels) needs at least 32 pixels a side.
MIN_FRAME_SIDE = 32
#: Largest stored value (10 bits stored, as in BCS-DBT).
MAX_VALUE = 1023

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
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[str(p) for p in parts])


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """CSV text with ``header`` and ``rows`` (``\\n`` line ends, quoted where needed)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
