"""DEDUCE-style report filtering and the text rules that turn reports into findings.

(Over 400 lines on purpose: this module is the boundary that report text never crosses, so
reading, filtering and deriving stay in one file that can be audited alone.)

Report text is patient-identifying. It is read here, matched against fixed patterns, and
dropped: nothing in this module writes, logs or returns report text; outputs carry only
ids, types, dates and derived categories.

Why hand-written rules rather than medspacy/negspacy: the categories needed are few and
closed (a BI-RADS number, a handful of malignant and benign terms, a short list of
negation phrases); rules are transparent, fast on hundreds of thousands of reports, need
no model download (this must run offline in a hospital), and each negation case is
tested one by one. A NegEx-style window (negation trigger before the term, within the
same sentence, not across "but"/"however") covers the phrasings in scope.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from tasks.prepare.report_findings import classify_pathology, most_concerning, parse_birads, pathology_side

log = logging.getLogger(__name__)

REPORT_COLUMNS = ("report_id", "patient_id", "study_uid", "report_type", "report_date", "text")
KEPT_COLUMNS = ["report_id", "patient_id", "study_uid", "report_type", "report_date", "birads", "finding", "side"]


@dataclass(frozen=True)
class FilterResult:
    """Kept reports (without text), rejected rows and the counts of every step."""

    kept: pd.DataFrame
    rejects: pd.DataFrame
    counts: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedReports:
    """A report export as read: the usable rows, the rows left out and the encoding used."""

    reports: pd.DataFrame
    rejects: pd.DataFrame
    encoding: str


_REJECT_FIELDS = ["report_id", "patient_id", "study_uid", "reason"]
_ESCAPED = re.compile("[\udc80-\udcff]")  # undecodable bytes, kept apart by surrogateescape


def _detect_encoding(raw: bytes) -> str:
    """``utf-8-sig`` or ``utf-16`` when a byte-order mark says so, else ``utf-8``."""
    if raw.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return "utf-8"


def _read_csv_rows(p: Path, encoding: str) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Parse a CSV export row by row, leaving out (not failing on) rows that do not decode."""
    raw = p.read_bytes()
    used = _detect_encoding(raw) if encoding == "auto" else encoding
    try:
        text = raw.decode(used, errors="surrogateescape")
    except UnicodeError as exc:  # e.g. a UTF-16 file with an odd number of bytes
        raise ValueError(
            f"report export {p}: cannot be decoded as {used} ({type(exc).__name__} at byte "
            f"{getattr(exc, 'start', '?')}); pass --reports-encoding with the file's encoding"
        ) from None
    csv.field_size_limit(1 << 30)  # report bodies can be long
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        header = []
    except csv.Error as exc:
        raise ValueError(f"report export {p} line 1: not a readable CSV header ({exc})") from None
    if any(_ESCAPED.search(h) for h in header):
        raise ValueError(f"report export {p} line 1: the header is not valid {used}; "
                         "pass --reports-encoding with the file's encoding")
    header = [h.strip() for h in header]
    rows: list[list[str]] = []
    rejects: list[dict[str, object]] = []
    row_number, last_line = 0, reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # The csv module's messages name the fault, never the field's text.
            raise ValueError(f"report export {p} line {reader.line_num}: not readable as CSV ({exc}); "
                             "fix the file") from None
        first_line, last_line = last_line + 1, reader.line_num
        if not row:
            continue  # a blank line, as pandas skips them
        row_number += 1
        where = f"{p.name} row {row_number} (line {first_line})"

        def ident(name: str) -> str | None:
            if name not in header:
                return None
            i = header.index(name)
            value = row[i] if i < len(row) else None
            return None if value is None or _ESCAPED.search(value) else value

        bad_column = next((h for h, v in zip(header, row) if _ESCAPED.search(v)), None)
        if bad_column is not None:
            value = next(v for h, v in zip(header, row) if h == bad_column)
            byte = ord(_ESCAPED.search(value).group()) - 0xDC00
            reason = (f"undecodable: {where}: byte 0x{byte:02x} in column {bad_column!r} is not valid {used}; "
                      "the row is left out (pass --reports-encoding if the file is in another encoding)")
        elif len(row) != len(header):
            reason = f"malformed: {where} has {len(row)} fields, the header {len(header)}"
        else:
            rows.append(row)
            continue
        rejects.append({"report_id": ident("report_id"), "patient_id": ident("patient_id"),
                        "study_uid": ident("study_uid"), "reason": reason})
    if rejects:
        log.warning("report export %s: %d of %d rows could not be read and are rejected (first: %s)",
                    p.name, len(rejects), row_number, rejects[0]["reason"])
    frame = pd.DataFrame(rows, columns=header, dtype=object) if header else pd.DataFrame()
    return frame, pd.DataFrame(rejects, columns=_REJECT_FIELDS), used


def load_reports(path: str | os.PathLike[str], *, encoding: str = "auto") -> LoadedReports:
    """Read a report export (CSV or Parquet), check its columns and set aside unreadable rows.

    A CSV is decoded as ``encoding`` (``auto``: UTF-8, honouring a UTF-8 or UTF-16
    byte-order mark). A row holding bytes that are not valid in that encoding, or a wrong
    number of fields, is rejected alone with a reason naming the file, the row and the
    column, never the text; the other rows go on.

    Raises:
        ValueError: the file is missing, of an unknown type, not a CSV, or lacks a required
            column.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"report export {p} does not exist: pass the CSV or Parquet file with --reports")
    suffix = p.suffix.lower()
    rejects = pd.DataFrame(columns=_REJECT_FIELDS)
    used = "parquet"
    if suffix == ".parquet":
        frame = pd.read_parquet(p)
    elif suffix in (".csv", ".txt"):
        frame, rejects, used = _read_csv_rows(p, encoding)
    else:
        raise ValueError(f"report export {p}: unknown file type {suffix!r} (allowed: .csv, .parquet)")
    missing = [c for c in REPORT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"report export {p} lacks column(s) {missing}; required: {list(REPORT_COLUMNS)}"
        )
    reports = frame[list(REPORT_COLUMNS)].astype({c: "string" for c in REPORT_COLUMNS if c != "report_date"})
    return LoadedReports(reports.reset_index(drop=True), rejects, used)


def read_reports(path: str | os.PathLike[str], *, encoding: str = "auto") -> pd.DataFrame:
    """The readable rows of a report export (see :func:`load_reports`, which also gives the rejects).

    Raises:
        ValueError: the file is missing, of an unknown type, or lacks a required column.
    """
    return load_reports(path, encoding=encoding).reports


def term_pattern(terms: Iterable[str]) -> re.Pattern[str]:
    """Whole-word, case-insensitive pattern matching any of ``terms``."""
    words = [re.escape(t.strip()) for t in terms if t and t.strip()]
    if not words:
        raise ValueError("at least one search term is needed")
    return re.compile(r"(?<![\w-])(?:" + "|".join(words) + r")(?![\w-])", re.IGNORECASE)


def parse_report_date(value: object) -> dt.date | None:
    """An ISO date (``YYYY-MM-DD``, optionally with a time), or None if malformed."""
    if isinstance(value, (dt.date, pd.Timestamp)):
        return pd.Timestamp(value).date()
    text = str(value).strip() if value is not None else ""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}([ T][\d:.]+)?", text):
        return None
    try:
        return dt.date.fromisoformat(text[:10])
    except ValueError:
        return None


def filter_reports(
    reports: pd.DataFrame,
    *,
    radiology_type: str = "radiology",
    pathology_type: str = "pathology",
    radiology_terms: Iterable[str] = ("tomosynthesis",),
    pathology_terms: Iterable[str] = ("breast",),
    start_date: dt.date = dt.date(2014, 1, 1),
    end_date: dt.date = dt.date(2018, 1, 30),
) -> FilterResult:
    """Keep radiology reports naming a radiology term and pathology reports naming a pathology
    term, dated within ``start_date``..``end_date`` inclusive.

    Rows with a malformed date or an unknown report type are rejected with their
    ``report_id`` and the reason; the other rows go on. The returned frames never hold text.
    """
    patterns = {radiology_type.lower(): term_pattern(radiology_terms),
                pathology_type.lower(): term_pattern(pathology_terms)}
    kept, rejects = [], []
    counts: dict[str, object] = {"read": int(len(reports))}
    no_term = {t: 0 for t in patterns}
    out_of_range = {t: 0 for t in patterns}
    for row in reports.itertuples(index=False):
        rtype = str(row.report_type).strip().lower()
        if rtype not in patterns:
            rejects.append({"report_id": str(row.report_id), "patient_id": str(row.patient_id),
                            "study_uid": str(row.study_uid),
                            "reason": f"unknown report_type {str(row.report_type)!r} "
                                      f"(allowed: {sorted(patterns)})"})
            continue
        date = parse_report_date(row.report_date)
        if date is None:
            rejects.append({"report_id": str(row.report_id), "patient_id": str(row.patient_id),
                            "study_uid": str(row.study_uid),
                            "reason": f"malformed report_date {str(row.report_date)!r} (expected YYYY-MM-DD)"})
            continue
        if not (start_date <= date <= end_date):
            out_of_range[rtype] += 1
            continue
        text = str(row.text) if row.text is not None else ""
        if not patterns[rtype].search(text):
            no_term[rtype] += 1
            continue
        # Derive the categories now, so the text can be dropped here and never travel on.
        is_radiology = rtype == radiology_type.lower()
        kept.append({"report_id": str(row.report_id), "patient_id": str(row.patient_id),
                     "study_uid": str(row.study_uid), "report_type": rtype, "report_date": date,
                     "birads": parse_birads(text) if is_radiology else None,
                     "finding": None if is_radiology else classify_pathology(text),
                     "side": None if is_radiology else pathology_side(text)})
    kept_df = pd.DataFrame(kept, columns=KEPT_COLUMNS).astype(
        {"report_id": "string", "patient_id": "string", "study_uid": "string", "report_type": "string",
         "birads": "Int8", "finding": "string", "side": "string"})
    kept_df["report_date"] = pd.to_datetime(kept_df["report_date"])
    rejects_df = pd.DataFrame(rejects, columns=["report_id", "patient_id", "study_uid", "reason"])
    counts["kept"] = {t: int((kept_df["report_type"] == t).sum()) for t in sorted(patterns)}
    counts["without_term"] = no_term
    counts["out_of_date_range"] = out_of_range
    counts["rejected"] = _reason_counts(rejects_df["reason"])
    log.info("reports: read %d, kept %s, rejected %d", len(reports), counts["kept"], len(rejects_df))
    return FilterResult(kept_df, rejects_df, counts)


def _reason_counts(reasons: pd.Series) -> dict[str, int]:
    kinds = reasons.str.extract(r"^([a-z_ ]+?)(?: [\"'(]|$)")[0].fillna("other") if len(reasons) else reasons
    return {str(k): int(v) for k, v in kinds.value_counts().sort_index().items()}


# --- BI-RADS -----------------------------------------------------------------------------


# --- Pathology findings ------------------------------------------------------------------


# --- Study cohorts -------------------------------------------------------------------------

STUDY_COLUMNS = ["patient_id", "study_uid", "cohort", "side", "birads", "pathology_reports"]


def study_cohorts(
    kept: pd.DataFrame, *, radiology_type: str = "radiology", pathology_type: str = "pathology",
    window_days: int = 180,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Derive each study's cohort from its kept radiology and pathology reports.

    For every study with a kept radiology report: pathology of the same patient dated 0 to
    ``window_days`` days after one of the study's radiology reports decides (a malignant
    finding makes ``cancer``, otherwise a benign one ``benign``); without such pathology the
    most concerning BI-RADS decides (0, 3, 4, 5 or 6: ``actionable``; 1 or 2: ``normal``).
    A radiology report with no readable BI-RADS is rejected with its reason.

    Returns:
        ``(studies, rejects)``: one row per study with ``cohort`` and the pathology's
        ``side`` (``L``/``R``/None); rejected radiology reports with ``report_id`` and reason.
    """
    rtype, ptype = radiology_type.lower(), pathology_type.lower()
    radiology = kept[kept["report_type"] == rtype]
    pathology = kept[(kept["report_type"] == ptype) & kept["finding"].notna()]
    unreadable = radiology[radiology["birads"].isna()]
    rejects = pd.DataFrame({
        "report_id": unreadable["report_id"].astype(str), "patient_id": unreadable["patient_id"].astype(str),
        "study_uid": unreadable["study_uid"].astype(str),
        "reason": "no readable BI-RADS category in radiology report",
    }, columns=["report_id", "patient_id", "study_uid", "reason"])
    path_by_patient = {p: g for p, g in pathology.groupby("patient_id")}
    rows = []
    for (patient, study), reports in radiology.groupby(["patient_id", "study_uid"], sort=True):
        readable = reports["birads"].dropna()
        if readable.empty:
            continue
        birads = most_concerning(readable)
        candidates = path_by_patient.get(patient)
        matched = pd.DataFrame(columns=pathology.columns)
        if candidates is not None:
            lags = [(candidates["report_date"] - d).dt.days for d in reports["report_date"]]
            within = pd.concat([(lag >= 0) & (lag <= window_days) for lag in lags], axis=1).any(axis=1)
            matched = candidates[within]
        side = None
        if not matched.empty:
            malignant = matched[matched["finding"] == "malignant"]
            deciding = malignant if not malignant.empty else matched
            cohort = "cancer" if not malignant.empty else "benign"
            sides = set(deciding["side"].dropna())
            side = sides.pop() if len(sides) == 1 and deciding["side"].notna().all() else None
        else:
            cohort = "normal" if birads in (1, 2) else "actionable"
        rows.append({"patient_id": str(patient), "study_uid": str(study), "cohort": cohort, "side": side,
                     "birads": birads, "pathology_reports": int(len(matched))})
    studies = pd.DataFrame(rows, columns=STUDY_COLUMNS)
    return studies, rejects
