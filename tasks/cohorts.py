"""Read the BCS-DBT CSVs and turn their labels into cohorts and a per-volume table.

The collection ships three kinds of CSV per split (file paths, labels, boxes); their names
carry a space or a hyphen after ``BCS-DBT`` depending on where they were downloaded from.
This module finds them, normalises their columns to snake_case, validates the values the
rest of the pipeline relies on, and builds one row per volume with its cohort, its
binary label and, for volumes that cannot be used, the reason they are excluded. Excluded
volumes are kept (not dropped) so that every count can be audited.

Cohort sources are pluggable: :func:`cohorts_from_labels` makes one from the labels CSV,
a later stage may make another from radiology reports (same columns,
``cohort_source="reports"``), and :func:`combine_cohorts` merges them with the labels
winning and the disagreements counted.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: Cohorts in order of severity; the last is the most severe.
COHORTS: tuple[str, ...] = ("normal", "actionable", "benign", "cancer")
_SEVERITY = {c: i for i, c in enumerate(COHORTS)}

#: Binary label per cohort: 1 = tumour (benign or cancer), 0 = normal, <NA> = not used.
COHORT_LABEL: dict[str, int | None] = {"normal": 0, "actionable": None, "benign": 1, "cancer": 1}

VIEWS: tuple[str, ...] = ("lcc", "lmlo", "rcc", "rmlo")
KEY: list[str] = ["patient_id", "study_uid", "view"]
BOX_CLASSES: tuple[str, ...] = ("benign", "cancer")

FILE_PATH_COLUMNS: list[str] = [*KEY, "descriptive_path", "classic_path"]
LABEL_COLUMNS: list[str] = [*KEY, *COHORTS]
BOX_COLUMNS: list[str] = [
    *KEY, "subject", "slice", "x", "y", "width", "height", "box_class", "ad", "volume_slices",
]
COHORT_COLUMNS: list[str] = [*KEY, "cohort", "label", "cohort_source", "n_flags"]
REJECT_COLUMNS: list[str] = [*KEY, "reason"]
VOLUME_COLUMNS: list[str] = [
    *KEY, "descriptive_path", "classic_path", "cohort", "label", "cohort_source", "n_boxes",
    "excluded_reason",
]

#: CSV kinds, in the order :func:`find_bcs_csvs` returns them.
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
_IMAGE_FOLDER = "Breast-Cancer-Screening-DBT"

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
    bad_view = ~frame["view"].isin(VIEWS)
    if bad_view.any():
        row = _first_bad(bad_view)
        raise ValueError(
            f"{_where(path, row)}: column 'View' has {frame['view'].iloc[row]!r}, expected one "
            f"of {', '.join(VIEWS)} ({int(bad_view.sum())} such rows); fix or remove the rows"
        )
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
            bad = ~frame["box_class"].isin(BOX_CLASSES)
            if bad.any():
                row = _first_bad(bad)
                raise ValueError(
                    f"{_where(path, row)}: column 'Class' has {frame['box_class'].iloc[row]!r}, "
                    f"expected one of {', '.join(BOX_CLASSES)}; fix or remove the row"
                )
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


# --------------------------------------------------------------------------- cohorts


def _key_strings(frame: pd.DataFrame) -> list[str]:
    return frame[KEY].astype(str).agg("/".join, axis=1).tolist()


def _label_for(cohorts: pd.Series) -> pd.Series:
    return cohorts.map(COHORT_LABEL).astype("Int8")


def cohorts_from_labels(labels: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One cohort per volume from the labels table.

    A row with several flags gets the most severe one (cancer > benign > actionable >
    normal) and the volumes concerned are logged in one warning; a row with no flag is
    rejected rather than guessed.

    Args:
        labels: :attr:`BcsTables.labels` (``patient_id, study_uid, view`` and the four 0/1
            flag columns).

    Returns:
        ``(cohorts, rejects)``. ``cohorts`` has :data:`COHORT_COLUMNS`: ``cohort`` (one of
        :data:`COHORTS`), ``label`` (Int8: 1 benign/cancer, 0 normal, <NA> actionable),
        ``cohort_source`` (``"labels"``) and ``n_flags``. ``rejects`` has ``patient_id,
        study_uid, view, reason`` (reason ``"no-flag"``). Both are sorted by volume.

    Raises:
        ValueError: A required column is missing or a volume appears twice.
    """
    missing = [c for c in LABEL_COLUMNS if c not in labels.columns]
    if missing:
        raise ValueError(f"labels table: missing columns {missing}; pass BcsTables.labels")
    duplicated = labels.duplicated(subset=KEY)
    if duplicated.any():
        raise ValueError(
            f"labels table: {int(duplicated.sum())} volumes appear twice "
            f"(first: {_key_strings(labels.loc[duplicated])[0]}); de-duplicate it first "
            f"(load_bcs_tables does)"
        )
    labels = labels.sort_values(KEY, kind="stable").reset_index(drop=True)
    flags = labels[list(COHORTS)].astype("int64").to_numpy()
    n_flags = flags.sum(axis=1)
    # The most severe flagged cohort: the highest column index holding a 1.
    worst = np.where(n_flags > 0, len(COHORTS) - 1 - np.argmax(flags[:, ::-1], axis=1), -1)

    multi = n_flags > 1
    if multi.any():
        details = [
            f"{key} ({'+'.join(c for c, f in zip(COHORTS, row) if f)} -> {COHORTS[w]})"
            for key, row, w in zip(_key_strings(labels.loc[multi]), flags[multi], worst[multi])
        ]
        logger.warning(
            "%d label rows have more than one flag; the most severe wins: %s%s",
            len(details), ", ".join(details[:50]),
            f" and {len(details) - 50} more" if len(details) > 50 else "",
        )

    none = n_flags == 0
    rejects = labels.loc[none, KEY].assign(reason="no-flag").reset_index(drop=True)
    if none.any():
        logger.warning(
            "%d label rows have no flag set and are rejected: %s", int(none.sum()),
            ", ".join(_key_strings(rejects)[:50]),
        )

    kept = labels.loc[~none, KEY].reset_index(drop=True)
    cohort = pd.Series([COHORTS[w] for w in worst[~none]], dtype="str")
    kept["cohort"] = cohort
    kept["label"] = _label_for(cohort)
    kept["cohort_source"] = "labels"
    kept["n_flags"] = n_flags[~none].astype("int64")
    return kept[COHORT_COLUMNS], rejects[REJECT_COLUMNS]


def cohorts_from_reports(studies: pd.DataFrame, file_paths: pd.DataFrame) -> pd.DataFrame:
    """Per-volume cohorts from report-derived study cohorts (:func:`tasks.reports.study_cohorts`).

    A study's cohort applies to its volumes (the views the file-paths table lists for it).
    Where the deciding pathology names one side (``side`` ``L``/``R``), only that side's
    views take the cohort and the other side's views are ``normal``: a cancer in the left
    breast does not make the right breast a tumour.

    Args:
        studies: ``patient_id, study_uid, cohort, side`` per study.
        file_paths: :attr:`BcsTables.file_paths` (which views each study has).

    Returns:
        A cohort source with :data:`COHORT_COLUMNS` and ``cohort_source="reports"``.
    """
    missing = [c for c in ("patient_id", "study_uid", "cohort", "side") if c not in studies.columns]
    if missing:
        raise ValueError(f"report study cohorts: missing columns {missing}")
    views = file_paths[KEY].astype(str).drop_duplicates()
    merged = views.merge(studies.astype({"patient_id": str, "study_uid": str}),
                         on=["patient_id", "study_uid"], how="inner")
    side = merged["side"].astype("object")
    other_side = side.notna() & (merged["view"].str[0].str.upper() != side.fillna(""))
    cohort = merged["cohort"].astype(str).where(~other_side, "normal")
    out = merged[KEY].copy()
    out["cohort"] = cohort.to_numpy()
    out["label"] = _label_for(out["cohort"])
    out["cohort_source"] = "reports"
    out["n_flags"] = pd.array([pd.NA] * len(out), dtype="Int64")
    return out[COHORT_COLUMNS].sort_values(KEY, kind="stable").reset_index(drop=True)


def combine_cohorts(sources: Sequence[pd.DataFrame]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Merge cohort sources (labels, reports, ...) into one cohort per volume.

    Each source is a table with :data:`COHORT_COLUMNS` (``n_flags`` optional) and one
    ``cohort_source`` value. Where sources disagree, ``labels`` wins, then the sources in
    the order given; every disagreement is counted by kind. A volume present in only one
    source takes that source's cohort.

    Args:
        sources: The cohort tables, e.g. ``[from_labels, from_reports]``.

    Returns:
        ``(cohorts, disagreements)``: ``cohorts`` has :data:`COHORT_COLUMNS` plus
        ``sources`` (the sources that had the volume, joined by ``+``), sorted by volume;
        ``disagreements`` maps ``"labels=normal,reports=cancer"`` (winner first) to a count.

    Raises:
        ValueError: No source, a source lacks a column, has no or several
            ``cohort_source`` values, an unknown cohort, or a volume twice.
    """
    if not sources:
        raise ValueError("combine_cohorts: no cohort source given; pass at least the labels cohorts")
    prepared = []
    for i, source in enumerate(sources):
        missing = [c for c in (*KEY, "cohort", "cohort_source") if c not in source.columns]
        if missing:
            raise ValueError(f"cohort source #{i}: missing columns {missing}; expected {COHORT_COLUMNS}")
        names = source["cohort_source"].dropna().unique().tolist()
        if len(names) > 1:
            raise ValueError(f"cohort source #{i}: several cohort_source values {names}; pass one table per source")
        bad = ~source["cohort"].isin(COHORTS)
        if bad.any():
            raise ValueError(
                f"cohort source #{i} ({names}): cohort {source['cohort'][bad].iloc[0]!r} at "
                f"{_key_strings(source.loc[bad])[0]}; expected one of {', '.join(COHORTS)}"
            )
        if source.duplicated(subset=KEY).any():
            raise ValueError(f"cohort source #{i} ({names}): a volume appears twice; one row per volume")
        if source.empty:
            continue
        prepared.append((names[0] if names else f"source{i}", source))

    order = sorted(range(len(prepared)), key=lambda i: (prepared[i][0] != "labels", i))
    prepared = [prepared[i] for i in order]
    if not prepared:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in [*COHORT_COLUMNS, "sources"]}), {}

    merged = None
    for rank, (name, source) in enumerate(prepared):
        part = source[KEY].copy()
        part[f"cohort_{rank}"] = source["cohort"].astype("object").to_numpy()
        n_flags = source["n_flags"] if "n_flags" in source.columns else pd.Series(pd.NA, index=source.index)
        part[f"n_flags_{rank}"] = n_flags.astype("Int64").to_numpy()
        merged = part if merged is None else merged.merge(part, on=KEY, how="outer")
    assert merged is not None
    merged = merged.sort_values(KEY, kind="stable").reset_index(drop=True)

    names = [name for name, _ in prepared]
    cohort_cols = [f"cohort_{rank}" for rank in range(len(prepared))]
    present = merged[cohort_cols].notna().to_numpy()
    values = merged[cohort_cols].astype("object").to_numpy()
    winner = present.argmax(axis=1)  # first source (labels first) that has the volume
    rows = np.arange(len(merged))
    chosen = values[rows, winner]

    disagreements: dict[str, int] = {}
    for i, name in enumerate(names):
        differs = present[:, i] & (winner != i) & (values[:, i] != chosen)
        for win, win_value, value in zip(winner[differs], chosen[differs], values[differs, i]):
            kind = f"{names[win]}={win_value},{name}={value}"
            disagreements[kind] = disagreements.get(kind, 0) + 1
    if disagreements:
        logger.warning("Cohort sources disagree (the first named wins): %s", disagreements)

    n_flags = merged[[f"n_flags_{rank}" for rank in range(len(prepared))]].to_numpy(dtype="object")
    combined = merged[KEY].copy()
    combined["cohort"] = pd.Series(chosen, dtype="str")
    combined["label"] = _label_for(combined["cohort"])
    combined["cohort_source"] = pd.Series([names[w] for w in winner], dtype="str")
    combined["n_flags"] = pd.array(n_flags[rows, winner], dtype="Int64")
    combined["sources"] = pd.Series(["+".join(n for n, p in zip(names, row) if p) for row in present], dtype="str")
    return combined[[*COHORT_COLUMNS, "sources"]], dict(sorted(disagreements.items()))


# --------------------------------------------------------------------------- volume table


def build_volume_table(
    file_paths: pd.DataFrame,
    cohorts: pd.DataFrame,
    boxes: pd.DataFrame,
    *,
    cohort_rejects: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per volume with its paths, cohort, label and exclusion reason.

    Every volume from the file-paths table and from the cohort table is kept;
    ``excluded_reason`` says why a volume is not used (null when it is used):

    - ``"no-file-path"``: has a cohort but no row in the file-paths CSV (no image);
    - ``"no-label"``: has no label row;
    - the rejection reason from ``cohort_rejects`` (e.g. ``"no-flag"``);
    - ``"actionable"``: actionable volumes (neither normal nor tumour).

    Args:
        file_paths: :attr:`BcsTables.file_paths`.
        cohorts: From :func:`cohorts_from_labels` or :func:`combine_cohorts`.
        boxes: :attr:`BcsTables.boxes`; counted per volume into ``n_boxes``.
        cohort_rejects: The rejects from :func:`cohorts_from_labels`, so their reason shows
            instead of ``"no-label"``.

    Returns:
        :data:`VOLUME_COLUMNS` (``label`` Int8 with <NA> where unused, ``n_boxes`` int),
        plus ``csv_split`` when the file-paths table has it, sorted by volume.

    Raises:
        ValueError: A table lacks a column or repeats a volume.
    """
    for name, table, columns in (
        ("file_paths", file_paths, FILE_PATH_COLUMNS),
        ("cohorts", cohorts, [*KEY, "cohort", "cohort_source"]),
        ("boxes", boxes, KEY),
    ):
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise ValueError(f"build_volume_table: {name} lacks columns {missing}")
    for name, table in (("file_paths", file_paths), ("cohorts", cohorts)):
        if table.duplicated(subset=KEY).any():
            raise ValueError(
                f"build_volume_table: {name} repeats volume "
                f"{_key_strings(table.loc[table.duplicated(subset=KEY)])[0]}; de-duplicate it first"
            )

    path_columns = [*FILE_PATH_COLUMNS, *(["csv_split"] if "csv_split" in file_paths.columns else [])]
    paths = file_paths[path_columns].assign(_has_path=True)
    labelled = cohorts[[*KEY, "cohort", "cohort_source"]].assign(_has_cohort=True)
    table = paths.merge(labelled, on=KEY, how="outer")
    if cohort_rejects is not None and len(cohort_rejects):
        rejected = cohort_rejects[[*KEY, "reason"]].drop_duplicates(subset=KEY)
        table = table.merge(rejected.rename(columns={"reason": "_rejected"}), on=KEY, how="left")
    else:
        table["_rejected"] = pd.NA

    counts = boxes.groupby(KEY, observed=True).size().rename("n_boxes").reset_index()
    table = table.merge(counts, on=KEY, how="left")
    table["n_boxes"] = table["n_boxes"].fillna(0).astype("int64")

    has_path = table["_has_path"].eq(True)
    has_cohort = table["_has_cohort"].eq(True)
    reason = pd.Series(pd.NA, index=table.index, dtype="str")
    reason = reason.mask(table["cohort"].eq("actionable").fillna(False), "actionable")
    reason = reason.mask(~has_cohort, "no-label")
    rejected = table["_rejected"].notna() & ~has_cohort
    reason = reason.mask(rejected, table["_rejected"].astype("str"))
    reason = reason.mask(~has_path, "no-file-path")
    table["excluded_reason"] = reason
    table["label"] = _label_for(table["cohort"])

    orphans = table["n_boxes"].gt(0) & ~table["cohort"].isin(("benign", "cancer"))
    if orphans.any():
        logger.warning(
            "%d volumes have boxes but are not labelled benign or cancer (boxes unused): %s",
            int(orphans.sum()), ", ".join(_key_strings(table.loc[orphans])[:20]),
        )
    columns = [*VOLUME_COLUMNS, *(["csv_split"] if "csv_split" in table.columns else [])]
    return table.sort_values(KEY, kind="stable").reset_index(drop=True)[columns]


def _count(series: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in series.value_counts(dropna=False).sort_index().items()}


def volume_counts(volumes: pd.DataFrame) -> dict[str, object]:
    """Counts for the audit trail: volumes and patients per cohort, exclusions per reason.

    Args:
        volumes: From :func:`build_volume_table`.

    Returns:
        A JSON-able dict: ``volumes``, ``patients``, ``included_volumes``,
        ``included_patients``, ``by_cohort`` (all volumes; ``"none"`` for no cohort),
        ``included_by_cohort``, ``included_patients_by_cohort``, ``excluded`` (reason ->
        volumes) and ``positives_without_boxes`` (included benign/cancer volumes with no box).
    """
    included = volumes["excluded_reason"].isna()
    inc = volumes.loc[included]
    by_cohort = volumes["cohort"].astype("object").where(volumes["cohort"].notna(), "none")
    positives = inc["cohort"].isin(("benign", "cancer"))
    return {
        "volumes": int(len(volumes)),
        "patients": int(volumes["patient_id"].nunique()),
        "included_volumes": int(included.sum()),
        "included_patients": int(inc["patient_id"].nunique()),
        "by_cohort": _count(by_cohort),
        "included_by_cohort": _count(inc["cohort"]),
        "included_patients_by_cohort": {
            str(c): int(n) for c, n in inc.groupby("cohort", observed=True)["patient_id"].nunique().items()
        },
        "excluded": _count(volumes.loc[~included, "excluded_reason"]),
        "positives_without_boxes": int((positives & inc["n_boxes"].eq(0)).sum()),
    }


def included(volumes: pd.DataFrame) -> pd.DataFrame:
    """The volumes that are used: no exclusion reason and a 0/1 label."""
    mask = volumes["excluded_reason"].isna() & volumes["label"].isin((0, 1))
    return volumes.loc[mask]


def most_severe(cohorts: Iterable[str]) -> str:
    """The most severe of ``cohorts`` (see :data:`COHORTS`)."""
    return max(cohorts, key=_SEVERITY.__getitem__)


# --------------------------------------------------------------------------- accounting

#: Reasons a listed volume is left out on purpose (the study's design or the strategy),
#: which do not count towards the reject fraction; every other reason is a fault.
BY_DESIGN_REASONS: tuple[str, ...] = ("actionable", "not-selected")


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
    needs a box for) or ``not-selected`` (the strategy did not pick it, e.g. the other
    normal views of a patient under single-slice).

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
            reason, path = extracted[key][0], extracted[key][1] or path
        elif key in planned:
            reason = "no-frames: the plan selected no frame of this volume that could be written"
        elif row.label == 1:
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


def reject_fraction_error(accounting: dict[str, object], *, option: str = "--max-reject-fraction") -> str | None:
    """The message that stops a run whose faults exceed the allowed share, or None."""
    listed = int(accounting.get("listed", 0) or 0)
    faults = int(accounting.get("faults", 0) or 0)
    allowed = float(accounting.get("max_reject_fraction", 1.0))
    if not listed or faults / listed <= allowed:
        return None
    counts = ", ".join(f"{code}: {n}" for code, n in dict(accounting.get("rejected_by_reason", {})).items()
                       if code not in BY_DESIGN_REASONS)
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
