"""Report filtering and report-derived findings, rule by rule."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from tasks.prepare.radiology_reports import filter_reports, read_reports, study_cohorts
from tasks.prepare.report_findings import classify_pathology, parse_birads, pathology_side


def _reports(rows: list[tuple[str, str, str, str, str]]) -> pd.DataFrame:
    """rows of (report_id, study_uid, report_type, report_date, text) for patient P1."""
    return pd.DataFrame(
        [{"report_id": r, "patient_id": "P1", "study_uid": s, "report_type": t, "report_date": d, "text": x}
         for r, s, t, d, x in rows]
    )


def _kept_ids(rows) -> list[str]:
    return sorted(filter_reports(_reports(rows)).kept["report_id"].tolist())


@pytest.mark.parametrize(
    ("date", "kept"),
    [("2013-12-31", False), ("2014-01-01", True), ("2014-01-02", True),
     ("2018-01-29", True), ("2018-01-30", True), ("2018-01-31", False)],
)
def test_date_boundaries_inclusive(date: str, kept: bool) -> None:
    ids = _kept_ids([("R1", "S1", "radiology", date, "DBT tomosynthesis screening. BI-RADS 1")])
    assert (ids == ["R1"]) is kept


@pytest.mark.parametrize("text", ["tomosynthesis", "TOMOSYNTHESIS", "Tomosynthesis", "ToMoSyNtHeSiS"])
def test_term_case_insensitive(text: str) -> None:
    assert _kept_ids([("R1", "S1", "radiology", "2015-05-05", f"Bilateral {text}. BI-RADS 2")]) == ["R1"]


@pytest.mark.parametrize("text", ["pretomosynthesis study", "tomosynthesisbased", "non-tomosynthesis-x"])
def test_term_inside_longer_word_does_not_count(text: str) -> None:
    assert _kept_ids([("R1", "S1", "radiology", "2015-05-05", f"{text}. BI-RADS 2")]) == []


def test_pathology_needs_breast_whole_word() -> None:
    ids = _kept_ids([
        ("P1", "S1", "pathology", "2015-05-05", "Left breast core biopsy: fibroadenoma."),
        ("P2", "S1", "pathology", "2015-05-05", "Skin lesion: benign nevus."),
        ("P3", "S1", "pathology", "2015-05-05", "Breastfeeding history noted; colon polyp."),
    ])
    assert ids == ["P1"]


def test_terms_types_and_dates_are_configuration() -> None:
    rows = [("R1", "S1", "imaging", "2020-02-02", "Digital breast TOMO. BI-RADS 2")]
    result = filter_reports(_reports(rows), radiology_type="imaging", radiology_terms=("tomo",),
                            start_date=dt.date(2020, 1, 1), end_date=dt.date(2020, 12, 31))
    assert result.kept["report_id"].tolist() == ["R1"]


def test_malformed_date_and_unknown_type_are_rejected_rest_goes_on() -> None:
    result = filter_reports(_reports([
        ("R1", "S1", "radiology", "2016-13-45", "tomosynthesis BI-RADS 1"),
        ("R2", "S1", "cardiology", "2016-01-01", "echo"),
        ("R3", "S1", "radiology", "2016-01-01", "tomosynthesis BI-RADS 1"),
    ]))
    assert result.kept["report_id"].tolist() == ["R3"]
    reasons = dict(zip(result.rejects["report_id"], result.rejects["reason"]))
    assert set(reasons) == {"R1", "R2"}
    assert "malformed report_date '2016-13-45'" in reasons["R1"]
    assert "unknown report_type 'cardiology'" in reasons["R2"]
    assert result.counts["read"] == 3
    assert sum(result.counts["rejected"].values()) == 2


def test_kept_output_never_holds_text() -> None:
    secret = "Patient: Jane Secret-Doe DOB 1961-03-04"
    result = filter_reports(_reports([("R1", "S1", "radiology", "2016-01-01", f"{secret} tomosynthesis BI-RADS 1")]))
    assert "text" not in result.kept.columns
    assert secret not in result.kept.to_csv() and secret not in result.rejects.to_csv()


@pytest.mark.parametrize(
    ("text", "category"),
    [("BI-RADS 4", 4), ("BIRADS: 2", 2), ("Bi-Rads category 0", 0), ("BI-RADS: 2 - benign", 2),
     ("bi-rads 5", 5), ("BI-RADS Category: 3", 3), ("No assessment given", None), ("BI-RADS: pending", None)],
)
def test_birads_spellings(text: str, category: int | None) -> None:
    assert parse_birads(f"Tomosynthesis. Impression: {text}.") == category


@pytest.mark.parametrize(
    "text",
    ["Left breast, core biopsy: negative for malignancy.",
     "Right breast: no evidence of carcinoma.",
     "Breast tissue with no malignancy identified.",
     "Breast: without evidence of malignancy.",
     "Breast: free of carcinoma.",
     "Breast: no DCIS."],
)
def test_each_negation_phrase_makes_benign(text: str) -> None:
    assert classify_pathology(text) == "benign"


@pytest.mark.parametrize(
    "text",
    ["Left breast: invasive ductal carcinoma.", "Breast: DCIS, high grade.", "Breast: malignant phyllodes.",
     "Breast: invasive lobular carcinoma.", "No atypia. Invasive carcinoma is present.",
     "Breast: no DCIS but invasive ductal carcinoma present."],
)
def test_malignant_findings(text: str) -> None:
    assert classify_pathology(text) == "malignant"


@pytest.mark.parametrize("text", ["Breast: fibroadenoma.", "Breast: benign fibrocystic changes.", "Breast: Fibrocystic change."])
def test_benign_findings(text: str) -> None:
    assert classify_pathology(text) == "benign"


def test_no_recognised_finding() -> None:
    assert classify_pathology("Breast core biopsy received in formalin.") is None


def test_pathology_side() -> None:
    assert pathology_side("LEFT breast, 2 o'clock") == "L"
    assert pathology_side("right breast") == "R"
    assert pathology_side("left and right breast") is None
    assert pathology_side("breast") is None


def _cohorts(rows, window_days: int = 180) -> pd.DataFrame:
    kept = filter_reports(_reports(rows)).kept
    studies, _ = study_cohorts(kept, window_days=window_days)
    return studies.set_index("study_uid")


@pytest.mark.parametrize(("days", "cohort"), [(0, "cancer"), (180, "cancer"), (181, "actionable"), (-1, "actionable")])
def test_pathology_window_edges(days: int, cohort: str) -> None:
    rad = dt.date(2015, 3, 1)
    path_date = (rad + dt.timedelta(days=days)).isoformat()
    studies = _cohorts([
        ("R1", "S1", "radiology", rad.isoformat(), "tomosynthesis BI-RADS 4"),
        ("P1", "", "pathology", path_date, "Left breast: invasive ductal carcinoma."),
    ])
    assert studies.loc["S1", "cohort"] == cohort


@pytest.mark.parametrize(("birads", "cohort"), [(0, "actionable"), (1, "normal"), (2, "normal"),
                                                 (3, "actionable"), (4, "actionable"), (5, "actionable")])
def test_birads_without_pathology(birads: int, cohort: str) -> None:
    studies = _cohorts([("R1", "S1", "radiology", "2015-03-01", f"tomosynthesis BI-RADS {birads}")])
    assert studies.loc["S1", "cohort"] == cohort


def test_benign_pathology_and_side() -> None:
    studies = _cohorts([
        ("R1", "S1", "radiology", "2015-03-01", "tomosynthesis BIRADS: 4"),
        ("P1", "", "pathology", "2015-03-20", "RIGHT breast: negative for malignancy; fibroadenoma."),
    ])
    assert studies.loc["S1", "cohort"] == "benign"
    assert studies.loc["S1", "side"] == "R"


def test_unreadable_birads_rejected_with_reason() -> None:
    kept = filter_reports(_reports([("R1", "S1", "radiology", "2015-03-01", "tomosynthesis, assessment pending")])).kept
    studies, rejects = study_cohorts(kept)
    assert studies.empty
    assert rejects["report_id"].tolist() == ["R1"]
    assert "BI-RADS" in rejects["reason"].iloc[0]


def test_study_with_two_radiology_reports_takes_most_concerning_birads() -> None:
    studies = _cohorts([
        ("R1", "S1", "radiology", "2015-03-01", "tomosynthesis BI-RADS 1"),
        ("R2", "S1", "radiology", "2015-03-15", "tomosynthesis addendum BI-RADS 0"),
    ])
    assert len(studies) == 1
    assert studies.loc["S1", "cohort"] == "actionable"
    assert studies.loc["S1", "birads"] == 0


def test_read_reports_errors_name_file_and_column(tmp_path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(ValueError, match="nope.csv"):
        read_reports(missing)
    bad = tmp_path / "bad.csv"
    bad.write_text("report_id,patient_id\nR1,P1\n")
    with pytest.raises(ValueError, match=r"bad.csv.*study_uid"):
        read_reports(bad)


def test_a_bad_byte_rejects_only_its_row_naming_file_and_row_never_text(tmp_path) -> None:
    from tasks.prepare.radiology_reports import load_reports

    secret = "Johanna Quixote DOB 1957-03-14 MRN 44175521"
    path = tmp_path / "reports.csv"
    path.write_bytes(
        b"report_id,patient_id,study_uid,report_type,report_date,text\n"
        + f'R1,P1,S1,radiology,2015-01-01,"{secret} tomosynthesis BI-RADS 2"\n'.encode()
        + b'R2,P2,S2,radiology,2015-01-01,"multi\nline ' + secret.encode() + b' \xff tomosynthesis"\n'
        + b"R3,P3,S3,radiology,2015-01-01,tomosynthesis BI-RADS 1\n")
    loaded = load_reports(path)
    assert loaded.reports["report_id"].tolist() == ["R1", "R3"]
    assert loaded.encoding == "utf-8"
    (reject,) = loaded.rejects.to_dict("records")
    assert reject["report_id"] == "R2"
    assert "reports.csv row 2 (line 3)" in reject["reason"] and "0xff" in reject["reason"]
    assert "Quixote" not in reject["reason"] and "1957" not in reject["reason"]
    # The same file read as Latin-1 keeps every row.
    assert load_reports(path, encoding="latin-1").reports["report_id"].tolist() == ["R1", "R2", "R3"]


def test_byte_order_marks_are_detected(tmp_path) -> None:
    from tasks.prepare.radiology_reports import load_reports

    text = "report_id,patient_id,study_uid,report_type,report_date,text\nR1,P1,S1,radiology,2015-01-01,Mélanie\n"
    for encoding, expected in (("utf-8-sig", "utf-8-sig"), ("utf-16", "utf-16")):
        path = tmp_path / f"{encoding}.csv"
        path.write_bytes(text.encode(encoding))
        loaded = load_reports(path)
        assert loaded.encoding == expected
        assert loaded.reports["text"].tolist() == ["Mélanie"]
        assert loaded.reports.columns[0] == "report_id"


def test_unknown_encoding_is_a_configuration_error() -> None:
    from pydantic import ValidationError

    from tasks.core.config import ReportsConfig

    with pytest.raises(ValidationError, match="not-a-codec"):
        ReportsConfig(encoding="not-a-codec")
