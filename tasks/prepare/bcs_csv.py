"""Find and read the BCS-DBT CSVs: file paths, labels and boxes, columns in snake_case.

The collection ships three kinds of CSV per split; their names carry a space or a hyphen
after ``BCS-DBT`` depending on where they were downloaded from. This module finds them,
normalises their columns to snake_case and validates the values the rest of the pipeline
relies on, naming the file, line and column of the first bad value.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from tasks.core.schema import COHORTS, COLLECTION_FOLDER, POSITIVE_COHORTS, VIEWS, VOLUME_KEY

logger = logging.getLogger("tasks.prepare.cohorts")  # the name the logs have always carried

KEY: list[str] = list(VOLUME_KEY)
#: A box's class: the positive cohorts.
BOX_CLASSES: tuple[str, ...] = POSITIVE_COHORTS

FILE_PATH_COLUMNS: list[str] = [*KEY, "descriptive_path", "classic_path"]
LABEL_COLUMNS: list[str] = [*KEY, *COHORTS]
BOX_COLUMNS: list[str] = [
    *KEY, "subject", "slice", "x", "y", "width", "height", "box_class", "ad", "volume_slices",
]
CSV_KINDS: tuple[str, ...] = ("file-paths", "labels", "boxes")
_REQUIRED = {"file-paths": FILE_PATH_COLUMNS, "labels": LABEL_COLUMNS, "boxes": BOX_COLUMNS}

# "BCS-DBT file-paths-train-v2.csv", "BCS-DBT-labels-validation-v2.csv", "bcs-dbt boxes-test.csv"
_CSV_NAME = re.compile(
    r"^bcs-dbt[\s_-]+(?P<kind>file[\s_-]?paths|labels|boxes)[\s_-]+"
    r"(?P<split>[a-z0-9]+(?:[-_][a-z0-9]+)*?)(?:[\s_-]+v(?P<version>\d+))?\.csv$",
    re.IGNORECASE,
)
# The pre-TCIA release ("data_train_v2.csv", "bboxes_v2.csv"): its boxes are mirrored.
_OLD_CSV_NAME = re.compile(r"^(data|bboxes)(_[a-z]+)?_v\d+\.csv$", re.IGNORECASE)
# The image tree: thousands of patient folders and no CSVs, so never searched.
_IMAGE_FOLDER = COLLECTION_FOLDER

# Canonical header spellings: lower-case letters and digits only -> snake_case name.
_COLUMN_ALIASES = {
    "patientid": "patient_id",
    "studyuid": "study_uid",
    "view": "view",
    "descriptivepath": "descriptive_path",
    "classicpath": "classic_path",
    "normal": "normal",
    "actionable": "actionable",
    "benign": "benign",
    "cancer": "cancer",
    "subject": "subject",
    "slice": "slice",
    "x": "x",
    "y": "y",
    "width": "width",
    "height": "height",
    "class": "box_class",
    "boxclass": "box_class",
    "ad": "ad",
    "volumeslices": "volume_slices",
}
# How the collection's CSVs spell each column, for error messages.
_CSV_SPELLING = {
    "patient_id": "PatientID", "study_uid": "StudyUID", "view": "View", "normal": "Normal",
    "actionable": "Actionable", "benign": "Benign", "cancer": "Cancer", "subject": "Subject",
    "slice": "Slice", "x": "X", "y": "Y", "width": "Width", "height": "Height",
    "box_class": "Class", "ad": "AD", "volume_slices": "VolumeSlices",
}
_INT_BOX_COLUMNS = ("slice", "x", "y", "width", "height", "volume_slices")


@dataclass(frozen=True)
class BcsTables:
    """The three BCS-DBT tables, all splits concatenated, columns in snake_case.

    Attributes:
        file_paths: ``patient_id, study_uid, view, descriptive_path, classic_path, csv_split``.
        labels: ``patient_id, study_uid, view, normal, actionable, benign, cancer, csv_split``.
        boxes: ``patient_id, study_uid, view, subject, slice, x, y, width, height, box_class,
            ad, volume_slices, csv_split`` (empty with these columns when no boxes CSV exists).
    """

    file_paths: pd.DataFrame
    labels: pd.DataFrame
    boxes: pd.DataFrame


# --------------------------------------------------------------------------- finding CSVs


def _csv_files(root: Path, max_depth: int = 2) -> list[Path]:
    """``*.csv`` files in ``root`` and up to ``max_depth`` folder levels below it."""
    found: list[Path] = []
    level = [root]
    for depth in range(max_depth + 1):
        next_level: list[Path] = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.is_file() and entry.name.lower().endswith(".csv"):
                    found.append(Path(entry.path))
                elif (depth < max_depth and entry.is_dir() and not entry.name.startswith(".")
                      and entry.name != _IMAGE_FOLDER):
                    next_level.append(Path(entry.path))
        level = next_level
    return found


def _kind_of(match: re.Match[str]) -> str:
    kind = re.sub(r"[\s_-]", "", match["kind"].lower())
    return "file-paths" if kind == "filepaths" else kind


def find_bcs_csvs(data_root: str | os.PathLike[str], *, require_labels: bool = True) -> dict[str, list[Path]]:
    """Find the BCS-DBT CSVs in ``data_root`` or up to two folder levels below it.

    Both spellings of the names are accepted, case-insensitively:
    ``BCS-DBT file-paths-train-v2.csv`` and ``BCS-DBT-file-paths-train-v2.csv`` (likewise
    ``labels`` and ``boxes``, for any split). Where one kind and split exist in several
    versions (``-v1``, ``-v2``), only the highest version is used and the others are logged
    as ignored, since mixing versions would duplicate or contradict rows. The pre-TCIA CSVs
    (``data_train_v2.csv``, ``bboxes_v2.csv``) are ignored with a warning: their boxes are
    mirrored relative to the TCIA images.

    Args:
        data_root: The download folder (the CSVs may sit beside ``Breast-Cancer-Screening-DBT``
            or in a sub-folder such as ``manifest-1617905855234/``).
        require_labels: Fail without a labels CSV (False when cohorts come from reports).

    Returns:
        ``{"file-paths": [...], "labels": [...], "boxes": [...]}``, each list sorted by path
        (``boxes`` and, without ``require_labels``, ``labels`` may be empty).

    Raises:
        ValueError: ``data_root`` is not a folder, or no file-paths or no labels CSV was found.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise ValueError(f"data_root {str(root)!r} is not a folder; pass the BCS-DBT download folder")

    candidates: dict[tuple[str, str], list[tuple[int, Path]]] = {}
    other: list[Path] = []
    for path in _csv_files(root):
        match = _CSV_NAME.match(path.name)
        if match:
            key = (_kind_of(match), match["split"].lower())
            version = int(match["version"]) if match["version"] else 0
            candidates.setdefault(key, []).append((version, path))
        elif _OLD_CSV_NAME.match(path.name):
            logger.warning(
                "Ignoring %s: a pre-TCIA BCS-DBT CSV (its boxes are mirrored relative to the TCIA "
                "images); tomoflow reads only the 'BCS-DBT <kind>-<split>-vN.csv' files",
                path,
            )
        else:
            other.append(path)
    if other:
        logger.debug("Ignoring %d CSV files that are not BCS-DBT tables: %s", len(other), other)

    found: dict[str, list[Path]] = {kind: [] for kind in CSV_KINDS}
    for (kind, split), versions in sorted(candidates.items()):
        newest = max(v for v, _ in versions)
        for version, path in versions:
            if version == newest:
                found[kind].append(path)
            else:
                logger.warning(
                    "Ignoring %s: a newer version (v%d) of the %s %s CSV is present", path, newest,
                    split, kind,
                )
    for kind in found:
        found[kind].sort()

    needed = ("file-paths", "labels") if require_labels else ("file-paths",)
    missing = [kind for kind in needed if not found[kind]]
    if missing:
        listing = ", ".join(p.name for p in [*sum(found.values(), []), *other]) or "no CSV files"
        raise ValueError(
            f"{root}: no BCS-DBT {' or '.join(missing)} CSV found (searched 2 folder levels deep; "
            f"found: {listing}). Expected names like 'BCS-DBT file-paths-train-v2.csv', "
            f"'BCS-DBT labels-train-v2.csv', 'BCS-DBT boxes-train-v2.csv' (a hyphen instead of the "
            f"space is fine); download them from the collection's TCIA page into {root}"
        )
    if not found["boxes"]:
        logger.warning("%s: no BCS-DBT boxes CSV found; positive volumes will have no boxes", root)
    return found


# --------------------------------------------------------------------------- loading CSVs


def cohort_csv_files(data_root: str | os.PathLike[str], *, require_labels: bool) -> list[str]:
    """The BCS-DBT CSVs under ``data_root`` (found by name), sorted: group-cohorts' inputs and cache key."""
    csvs = find_bcs_csvs(data_root, require_labels=require_labels)
    return sorted(str(p) for paths in csvs.values() for p in paths)


def _snake(name: str) -> str:
    compact = re.sub(r"[^0-9a-z]", "", name.lower())
    if compact in _COLUMN_ALIASES:
        return _COLUMN_ALIASES[compact]
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip())
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def _split_of(path: Path) -> str:
    match = _CSV_NAME.match(path.name)
    return match["split"].lower() if match else ""


def _where(path: Path, row: int) -> str:
    """``"<file> line 5 (data row 4)"`` for 0-based data row ``row`` (the header is line 1)."""
    return f"{path} line {int(row) + 2} (data row {int(row) + 1})"


def _first_bad(mask: pd.Series) -> int:
    return int(np.flatnonzero(mask.to_numpy())[0])


def _check_values(frame: pd.DataFrame, column: str, allowed: Sequence[str], path: Path, *, many: bool) -> None:
    """Stop at the first row whose ``column`` is not one of ``allowed``, naming file, line and value."""
    bad = ~frame[column].isin(allowed)
    if bad.any():
        row = _first_bad(bad)
        spelling = _CSV_SPELLING.get(column, column)
        tail = f" ({int(bad.sum())} such rows); fix or remove the rows" if many else "; fix or remove the row"
        raise ValueError(
            f"{_where(path, row)}: column {spelling!r} has {frame[column].iloc[row]!r}, expected one "
            f"of {', '.join(allowed)}{tail}"
        )


def _read_csv(path: Path, kind: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: cannot be read as a {kind} CSV ({exc}); re-download it") from exc
    raw_columns = list(frame.columns)
    frame.columns = [_snake(str(c)) for c in frame.columns]
    for column in _REQUIRED[kind]:
        if column not in frame.columns:
            raise ValueError(
                f"{path}: missing column {_CSV_SPELLING.get(column, column)!r} (a {kind} CSV needs "
                f"{', '.join(_CSV_SPELLING.get(c, c) for c in _REQUIRED[kind])}; found "
                f"{', '.join(map(str, raw_columns))}); "
                f"check the file is an unmodified BCS-DBT {kind} CSV"
            )
    for column in frame.columns:
        frame[column] = frame[column].str.strip()
    frame = frame.replace("", pd.NA)

    for column in KEY:
        blank = frame[column].isna()
        if blank.any():
            row = _first_bad(blank)
            raise ValueError(
                f"{_where(path, row)}: column {_CSV_SPELLING[column]!r} is empty; every row needs "
                f"{', '.join(KEY)}: fix or remove the row"
            )
    frame["view"] = frame["view"].str.lower()
    _check_values(frame, "view", VIEWS, path, many=True)
    return frame


def _integers(frame: pd.DataFrame, column: str, path: Path, allowed: str, *,
              flags: bool = False, nullable: bool = False) -> pd.Series:
    raw = frame[column]
    numbers = pd.to_numeric(raw, errors="coerce")
    bad = numbers.isna() & (raw.notna() | (not nullable))
    values = numbers.to_numpy(dtype="float64", na_value=np.nan)
    finite = np.isfinite(values)
    bad |= pd.Series(finite & (values != np.round(values)), index=raw.index)
    if flags:
        bad |= pd.Series(finite & ~np.isin(values, (0.0, 1.0)), index=raw.index)
    else:
        bad |= pd.Series(finite & (values < 0), index=raw.index)
    if bad.any():
        row = _first_bad(bad)
        key = "/".join(str(frame[c].iloc[row]) for c in KEY)
        value = "is empty" if pd.isna(raw.iloc[row]) else f"has {raw.iloc[row]!r}"
        raise ValueError(
            f"{_where(path, row)} ({key}): column {_CSV_SPELLING.get(column, column)!r} {value}, "
            f"expected {allowed} ({int(bad.sum())} such rows); fix or remove the rows"
        )
    return numbers.astype("Int64")


def _load_kind(paths: Sequence[Path], kind: str) -> pd.DataFrame:
    frames = []
    for path in paths:
        frame = _read_csv(path, kind)
        if kind == "labels":
            for column in COHORTS:
                frame[column] = _integers(frame, column, path, "0 or 1", flags=True).astype("int8")
        elif kind == "boxes":
            for column in _INT_BOX_COLUMNS:
                frame[column] = _integers(
                    frame, column, path, "a non-negative integer", nullable=column == "volume_slices"
                )
            frame["ad"] = _integers(frame, "ad", path, "0 or 1", flags=True, nullable=True)
            frame["box_class"] = frame["box_class"].str.lower()
            _check_values(frame, "box_class", BOX_CLASSES, path, many=False)
        frame["csv_split"] = _split_of(path)
        if kind == "boxes":
            # Where each box came from, so a box rejected later (outside its frame) names its row.
            frame["csv_file"] = path.name
            frame["csv_line"] = np.arange(2, len(frame) + 2, dtype="int64")
        frames.append(frame)
    columns = [*_REQUIRED[kind], "csv_split"]
    if not frames:
        empty = pd.DataFrame({c: pd.Series(dtype="str") for c in columns})
        for column in (*_INT_BOX_COLUMNS, "ad") if kind == "boxes" else ():
            empty[column] = empty[column].astype("Int64")
        return empty
    table = pd.concat(frames, ignore_index=True)
    extra = [c for c in table.columns if c not in columns]
    return table[columns + extra]


def _dedupe(table: pd.DataFrame, kind: str, key: list[str]) -> pd.DataFrame:
    """Drop rows repeated across files; the first file (sorted by path) wins a conflict."""
    content = [c for c in _REQUIRED[kind]]
    exact = table.duplicated(subset=content, keep="first")
    if exact.any():
        logger.warning("%s CSVs: dropped %d repeated rows (within or across files)", kind, int(exact.sum()))
        table = table.loc[~exact]
    conflict = table.duplicated(subset=key, keep="first")
    if conflict.any():
        ids = table.loc[conflict, key].astype(str).agg("/".join, axis=1).tolist()
        logger.warning(
            "%s CSVs: %d volumes appear more than once with different values; kept the first "
            "(by file name) for: %s%s", kind, len(ids), ", ".join(ids[:20]),
            f" and {len(ids) - 20} more" if len(ids) > 20 else "",
        )
        table = table.loc[~conflict]
    return table.reset_index(drop=True)


def load_bcs_tables(data_root: str | os.PathLike[str], *, require_labels: bool = True) -> BcsTables:
    """Find, read, validate and concatenate the BCS-DBT CSVs of every split.

    Column names become snake_case (``PatientID`` -> ``patient_id``, ``Class`` ->
    ``box_class``, ``VolumeSlices`` -> ``volume_slices``); views are lower-cased; a
    ``csv_split`` column records the split named in each row's file name. Rows repeated
    across files are dropped with a warning; where a volume appears twice with different
    values (file paths, labels), the first file by name wins and the volume ids are logged.

    Args:
        data_root: The download folder (see :func:`find_bcs_csvs`).
        require_labels: See :func:`find_bcs_csvs`; without labels the table is empty.

    Returns:
        The three tables.

    Raises:
        ValueError: A CSV is missing, unreadable, lacks a required column, or has a bad
            value (a view other than lcc/lmlo/rcc/rmlo, a flag other than 0/1, a non-integer
            box coordinate, a box class other than benign/cancer); the message names the file,
            the line and the value.
    """
    found = find_bcs_csvs(data_root, require_labels=require_labels)
    file_paths = _dedupe(_load_kind(found["file-paths"], "file-paths"), "file-paths", KEY)
    labels = _dedupe(_load_kind(found["labels"], "labels"), "labels", KEY)
    boxes = _dedupe(_load_kind(found["boxes"], "boxes"), "boxes", _REQUIRED["boxes"])
    logger.info(
        "BCS-DBT CSVs: %d volumes with file paths, %d label rows, %d boxes (%s)",
        len(file_paths), len(labels), len(boxes),
        ", ".join(f"{k}: {len(v)} files" for k, v in found.items()),
    )
    return BcsTables(file_paths=file_paths, labels=labels, boxes=boxes)
