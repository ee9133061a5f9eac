"""Tests for tasks.prepare.cohorts: finding and validating the BCS-DBT CSVs, cohorts, volume table."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from tasks.prepare.cohorts import (
    COHORT_COLUMNS,
    VOLUME_COLUMNS,
    build_volume_table,
    cohorts_from_labels,
    combine_cohorts,
    volume_counts,
)
from tasks.prepare.bcs_csv import find_bcs_csvs, load_bcs_tables

FP_HEADER = ["PatientID", "StudyUID", "View", "descriptive_path", "classic_path"]
LABEL_HEADER = ["PatientID", "StudyUID", "View", "Normal", "Actionable", "Benign", "Cancer"]
BOX_HEADER = ["PatientID", "StudyUID", "View", "Subject", "Slice", "X", "Y", "Width", "Height",
              "Class", "AD", "VolumeSlices"]


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def fp_row(pid: str, sid: str, view: str) -> list[object]:
    return [pid, sid, view, f"Breast-Cancer-Screening-DBT/{pid}/01-01-2000-{sid}-x/1.000000-NA-1/1-1.dcm",
            f"Breast-Cancer-Screening-DBT/{pid}/1.2.{sid}/1.2.{sid}.{view}/1-1.dcm"]


def make_root(tmp_path: Path) -> Path:
    """Train CSVs named with a space, validation with a hyphen (one folder down)."""
    root = tmp_path / "data"
    write_csv(root / "BCS-DBT file-paths-train-v2.csv", FP_HEADER,
              [fp_row("DBT-P00001", "DBT-S00001", "lcc"), fp_row("DBT-P00001", "DBT-S00001", "rcc"),
               fp_row("DBT-P00002", "DBT-S00002", "lmlo")])
    write_csv(root / "BCS-DBT labels-train-v2.csv", LABEL_HEADER,
              [["DBT-P00001", "DBT-S00001", "lcc", 1, 0, 0, 0],
               ["DBT-P00001", "DBT-S00001", "rcc", 0, 0, 0, 1],
               ["DBT-P00002", "DBT-S00002", "lmlo", 0, 1, 0, 0]])
    write_csv(root / "BCS-DBT boxes-train-v2.csv", BOX_HEADER,
              [["DBT-P00001", "DBT-S00001", "rcc", 7, 20, 100, 200, 50, 60, "cancer", 0, 60]])
    sub = root / "manifest-1617905855234"
    write_csv(sub / "BCS-DBT-file-paths-validation-v2.csv", FP_HEADER, [fp_row("DBT-P00003", "DBT-S00003", "RMLO")])
    write_csv(sub / "BCS-DBT-labels-validation-v2.csv", LABEL_HEADER,
              [["DBT-P00003", "DBT-S00003", "RMLO", 0, 0, 1, 0]])
    write_csv(sub / "BCS-DBT-boxes-validation-v2.csv", BOX_HEADER,
              [["DBT-P00003", "DBT-S00003", "rmlo", 9, 30, 10, 20, 30, 40, "Benign", 1, 55]])
    return root


def test_both_naming_styles_are_found_and_concatenated(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    found = find_bcs_csvs(root)
    assert [p.name for p in found["file-paths"]] == [
        "BCS-DBT file-paths-train-v2.csv", "BCS-DBT-file-paths-validation-v2.csv"]
    assert len(found["labels"]) == 2 and len(found["boxes"]) == 2

    tables = load_bcs_tables(root)
    assert list(tables.file_paths.columns[:5]) == [
        "patient_id", "study_uid", "view", "descriptive_path", "classic_path"]
    assert list(tables.labels.columns[:7]) == [
        "patient_id", "study_uid", "view", "normal", "actionable", "benign", "cancer"]
    assert list(tables.boxes.columns[:12]) == [
        "patient_id", "study_uid", "view", "subject", "slice", "x", "y", "width", "height",
        "box_class", "ad", "volume_slices"]
    assert len(tables.file_paths) == 4 and len(tables.labels) == 4 and len(tables.boxes) == 2
    assert set(tables.file_paths["view"]) == {"lcc", "rcc", "lmlo", "rmlo"}  # lower-cased
    assert set(tables.file_paths["csv_split"]) == {"train", "validation"}
    assert set(tables.boxes["box_class"]) == {"cancer", "benign"}
    assert tables.boxes["slice"].tolist() == [20, 30]


def test_csvs_deeper_than_two_levels_are_not_found(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    write_csv(deep / "BCS-DBT file-paths-train-v2.csv", FP_HEADER, [])
    write_csv(deep / "BCS-DBT labels-train-v2.csv", LABEL_HEADER, [])
    with pytest.raises(ValueError, match="no BCS-DBT file-paths or labels CSV"):
        find_bcs_csvs(tmp_path)
    assert find_bcs_csvs(tmp_path / "a")["labels"]  # two levels below "a" is fine


def test_missing_labels_csv_lists_what_was_found(tmp_path: Path) -> None:
    write_csv(tmp_path / "BCS-DBT file-paths-train-v2.csv", FP_HEADER, [])
    with pytest.raises(ValueError) as err:
        find_bcs_csvs(tmp_path)
    assert "labels" in str(err.value)
    assert "BCS-DBT file-paths-train-v2.csv" in str(err.value)  # what was found
    assert "BCS-DBT labels-train-v2.csv" in str(err.value)  # what is expected


def test_old_pre_tcia_csvs_are_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_root(tmp_path)
    write_csv(root / "data_train_v2.csv", ["PatientID", "StudyUID", "View", "Normal"], [["DBT-P09999", "S", "lcc", 1]])
    write_csv(root / "manifest-1617905855234" / "bboxes_v2.csv", BOX_HEADER,
              [["DBT-P00001", "DBT-S00001", "rcc", 7, 20, 1790, 200, 50, 60, "cancer", 0, 60]])
    with caplog.at_level(logging.WARNING, logger="tasks.prepare.cohorts"):
        tables = load_bcs_tables(root)
    ignored = [r.getMessage() for r in caplog.records if "pre-TCIA" in r.getMessage()]
    assert len(ignored) == 2
    assert any("data_train_v2.csv" in m for m in ignored) and any("bboxes_v2.csv" in m for m in ignored)
    assert "DBT-P09999" not in set(tables.labels["patient_id"])
    assert tables.boxes["x"].tolist() == [100, 10]  # not the mirrored 1790


def test_older_version_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_root(tmp_path)
    write_csv(root / "BCS-DBT labels-train-v1.csv", LABEL_HEADER, [["DBT-P00001", "DBT-S00001", "lcc", 0, 0, 0, 1]])
    with caplog.at_level(logging.WARNING, logger="tasks.prepare.cohorts"):
        found = find_bcs_csvs(root)
    assert "BCS-DBT labels-train-v1.csv" not in [p.name for p in found["labels"]]
    assert any("labels-train-v1" in r.getMessage() for r in caplog.records)


def test_duplicates_across_files_are_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_root(tmp_path)
    # The same train labels saved again under the other naming style.
    write_csv(root / "BCS-DBT-labels-train-v2.csv", LABEL_HEADER,
              [["DBT-P00001", "DBT-S00001", "lcc", 1, 0, 0, 0]])
    with caplog.at_level(logging.WARNING, logger="tasks.prepare.cohorts"):
        tables = load_bcs_tables(root)
    assert len(tables.labels) == 4
    assert not tables.labels.duplicated(subset=["patient_id", "study_uid", "view"]).any()
    assert any("repeated" in r.getMessage() for r in caplog.records)


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write_csv(root / "BCS-DBT labels-train-v2.csv", LABEL_HEADER[:-1], [["DBT-P00001", "DBT-S00001", "lcc", 1, 0, 0]])
    with pytest.raises(ValueError) as err:
        load_bcs_tables(root)
    assert "BCS-DBT labels-train-v2.csv" in str(err.value)
    assert "'Cancer'" in str(err.value)


def test_bad_view_names_file_line_and_value(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write_csv(root / "BCS-DBT file-paths-train-v2.csv", FP_HEADER,
              [fp_row("DBT-P00001", "DBT-S00001", "lcc"), fp_row("DBT-P00001", "DBT-S00001", "lxx")])
    with pytest.raises(ValueError) as err:
        load_bcs_tables(root)
    message = str(err.value)
    assert "BCS-DBT file-paths-train-v2.csv" in message
    assert "line 3" in message  # header is line 1, the bad row the second data row
    assert "'lxx'" in message


def test_bad_flag_names_file_line_and_value(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write_csv(root / "manifest-1617905855234" / "BCS-DBT-labels-validation-v2.csv", LABEL_HEADER,
              [["DBT-P00003", "DBT-S00003", "rmlo", 0, 0, 2, 0]])
    with pytest.raises(ValueError) as err:
        load_bcs_tables(root)
    message = str(err.value)
    assert "BCS-DBT-labels-validation-v2.csv" in message
    assert "line 2" in message and "'Benign'" in message and "'2'" in message


def test_non_integer_box_coordinate_is_rejected(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write_csv(root / "BCS-DBT boxes-train-v2.csv", BOX_HEADER,
              [["DBT-P00001", "DBT-S00001", "rcc", 7, 20, "abc", 200, 50, 60, "cancer", 0, 60]])
    with pytest.raises(ValueError, match=r"boxes-train-v2.csv line 2.*'X'.*'abc'"):
        load_bcs_tables(root)


def labels_frame(rows: list[list[object]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["patient_id", "study_uid", "view", "normal", "actionable", "benign", "cancer"])


def test_two_flags_most_severe_wins_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    labels = labels_frame([
        ["P1", "S1", "lcc", 1, 0, 0, 0],
        ["P1", "S1", "rcc", 0, 0, 1, 1],
        ["P2", "S2", "lcc", 1, 1, 0, 0],
        ["P3", "S3", "lcc", 0, 0, 1, 0],
    ])
    with caplog.at_level(logging.WARNING, logger="tasks.prepare.cohorts"):
        cohorts, rejects = cohorts_from_labels(labels)
    assert list(cohorts.columns) == COHORT_COLUMNS
    by_key = cohorts.set_index(["patient_id", "study_uid", "view"])
    assert by_key.loc[("P1", "S1", "rcc"), "cohort"] == "cancer"
    assert by_key.loc[("P1", "S1", "rcc"), "n_flags"] == 2
    assert by_key.loc[("P2", "S2", "lcc"), "cohort"] == "actionable"
    assert by_key.loc[("P1", "S1", "lcc"), "label"] == 0
    assert by_key.loc[("P3", "S3", "lcc"), "label"] == 1
    assert pd.isna(by_key.loc[("P2", "S2", "lcc"), "label"])
    assert (cohorts["cohort_source"] == "labels").all()
    assert rejects.empty
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("2 label rows have more than one flag")
    assert "P1/S1/rcc" in warnings[0] and "P2/S2/lcc" in warnings[0]


def test_row_without_flag_is_rejected_not_lost() -> None:
    labels = labels_frame([["P1", "S1", "lcc", 0, 0, 0, 0], ["P1", "S1", "rcc", 1, 0, 0, 0]])
    cohorts, rejects = cohorts_from_labels(labels)
    assert cohorts["view"].tolist() == ["rcc"]
    assert rejects.to_dict("records") == [
        {"patient_id": "P1", "study_uid": "S1", "view": "lcc", "reason": "no-flag"}]


def cohort_source(rows: list[tuple[str, str, str, str]], source: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["patient_id", "study_uid", "view", "cohort"])
    frame["label"] = frame["cohort"].map({"normal": 0, "benign": 1, "cancer": 1, "actionable": None})
    frame["cohort_source"] = source
    frame["n_flags"] = 1
    return frame


def test_combine_cohorts_labels_win_and_disagreements_counted(caplog: pytest.LogCaptureFixture) -> None:
    labels = cohort_source([("P1", "S1", "lcc", "normal"), ("P1", "S1", "rcc", "normal"),
                            ("P2", "S2", "lcc", "benign"), ("P3", "S3", "lcc", "cancer")], "labels")
    reports = cohort_source([("P1", "S1", "lcc", "cancer"), ("P1", "S1", "rcc", "cancer"),
                             ("P2", "S2", "lcc", "benign"), ("P3", "S3", "lcc", "normal"),
                             ("P4", "S4", "lcc", "benign")], "reports")
    with caplog.at_level(logging.WARNING, logger="tasks.prepare.cohorts"):
        combined, disagreements = combine_cohorts([reports, labels])  # labels win wherever listed
    assert disagreements == {"labels=cancer,reports=normal": 1, "labels=normal,reports=cancer": 2}
    by_key = combined.set_index(["patient_id", "study_uid", "view"])
    assert by_key.loc[("P1", "S1", "lcc"), "cohort"] == "normal"
    assert by_key.loc[("P1", "S1", "lcc"), "cohort_source"] == "labels"
    assert by_key.loc[("P3", "S3", "lcc"), "label"] == 1
    assert by_key.loc[("P4", "S4", "lcc"), "cohort_source"] == "reports"  # only the reports know it
    assert by_key.loc[("P2", "S2", "lcc"), "sources"] == "labels+reports"
    assert any("disagree" in r.getMessage() for r in caplog.records)


def test_combine_cohorts_single_source_is_identity() -> None:
    labels = cohort_source([("P1", "S1", "lcc", "normal"), ("P2", "S2", "lcc", "cancer")], "labels")
    combined, disagreements = combine_cohorts([labels])
    assert disagreements == {}
    assert combined["cohort"].tolist() == ["normal", "cancer"]
    assert combined["label"].tolist() == [0, 1]


def test_volume_table_keeps_excluded_rows_with_reasons(tmp_path: Path) -> None:
    tables = load_bcs_tables(make_root(tmp_path))
    labels = pd.concat([tables.labels, labels_frame([["DBT-P00009", "DBT-S00009", "lcc", 0, 0, 0, 1]])])
    labels.loc[(labels["patient_id"] == "DBT-P00001") & (labels["view"] == "lcc"), "normal"] = 0  # no flag
    cohorts, rejects = cohorts_from_labels(labels)
    file_paths = pd.concat([tables.file_paths, pd.DataFrame([fp_row("DBT-P00008", "DBT-S00008", "rcc")],
                                                            columns=["patient_id", "study_uid", "view",
                                                                     "descriptive_path", "classic_path"])])
    volumes = build_volume_table(file_paths, cohorts, tables.boxes, cohort_rejects=rejects)
    assert list(volumes.columns[: len(VOLUME_COLUMNS)]) == VOLUME_COLUMNS
    reasons = dict(zip(volumes["patient_id"] + "/" + volumes["view"], volumes["excluded_reason"]))
    assert reasons["DBT-P00002/lmlo"] == "actionable"
    assert reasons["DBT-P00001/lcc"] == "no-flag"
    assert reasons["DBT-P00008/rcc"] == "no-label"
    assert reasons["DBT-P00009/lcc"] == "no-file-path"
    assert pd.isna(reasons["DBT-P00001/rcc"]) and pd.isna(reasons["DBT-P00003/rmlo"])
    assert volumes.set_index("view").loc["rcc"].query("patient_id == 'DBT-P00001'")["n_boxes"].item() == 1

    counts = volume_counts(volumes)
    json.dumps(counts)  # JSON-able
    assert counts["volumes"] == 6
    assert counts["included_volumes"] == 2
    assert counts["excluded"] == {"actionable": 1, "no-file-path": 1, "no-flag": 1, "no-label": 1}
    assert counts["included_by_cohort"] == {"benign": 1, "cancer": 1}
    assert counts["positives_without_boxes"] == 0


def test_cohorts_from_reports_apply_side_and_study_views() -> None:
    from tasks.prepare.cohorts import cohorts_from_reports

    file_paths = pd.DataFrame({
        "patient_id": ["P1"] * 4 + ["P2"] * 2,
        "study_uid": ["S1"] * 4 + ["S2"] * 2,
        "view": ["lcc", "lmlo", "rcc", "rmlo", "lcc", "rcc"],
        "descriptive_path": ["x"] * 6, "classic_path": ["y"] * 6,
    })
    studies = pd.DataFrame({"patient_id": ["P1", "P2"], "study_uid": ["S1", "S2"],
                            "cohort": ["cancer", "benign"], "side": ["L", None]})
    out = cohorts_from_reports(studies, file_paths).set_index("view")
    p1 = out[out["patient_id"] == "P1"]["cohort"].to_dict()
    assert p1 == {"lcc": "cancer", "lmlo": "cancer", "rcc": "normal", "rmlo": "normal"}
    p2 = out[out["patient_id"] == "P2"]["cohort"].to_dict()
    assert p2 == {"lcc": "benign", "rcc": "benign"}
    assert set(out["cohort_source"]) == {"reports"}
    assert out.loc[out["cohort"] == "normal", "label"].eq(0).all()


def test_every_listed_volume_is_used_or_rejected_with_a_reason() -> None:
    from tasks.prepare.rejects import account_volumes, reject_fraction_error, reject_reason

    volumes = pd.DataFrame({
        "patient_id": ["P1", "P1", "P2", "P3", "P4", "P5", "P6"],
        "study_uid": ["S1", "S1", "S2", "S3", "S4", "S5", "S6"],
        "view": ["lcc", "rcc", "lcc", "lcc", "lcc", "lcc", "lcc"],
        "descriptive_path": ["a.dcm"] * 6 + [None],
        "label": pd.array([0, 0, None, 1, 0, 1, 0], dtype="Int8"),
        "excluded_reason": [None, None, "no-label", None, None, None, "no-file-path"],
    })
    key = ["patient_id", "study_uid", "view"]
    plan = volumes.iloc[[0, 3, 4]][key]
    manifest = volumes.iloc[[0]][key]
    extraction = pd.DataFrame([{"kind": "volume", "patient_id": "P3", "study_uid": "S3", "view": "lcc",
                                "report_id": None, "path": "b.dcm",
                                "reason": reject_reason("missing volume: not found under the root")}])
    rows, accounting = account_volumes(volumes, plan, manifest, extraction, max_reject_fraction=0.1)
    reasons = dict(zip(rows["patient_id"] + "/" + rows["view"], rows["reason"].str.split(":").str[0]))
    assert reasons == {"P1/rcc": "not-selected", "P2/lcc": "no-label", "P3/lcc": "missing-file",
                       "P4/lcc": "no-frames", "P5/lcc": "no-box"}
    assert accounting["listed"] == 6 and accounting["used"] == 1 and accounting["rejected"] == 5
    assert accounting["reconciled"] and accounting["faults"] == 4
    message = reject_fraction_error(accounting)
    assert "4 of 6 volumes" in message and "no-label: 1" in message and "--max-reject-fraction" in message
    assert "not-selected" not in message
    assert reject_fraction_error({**accounting, "max_reject_fraction": 1.0}) is None
