"""The synthetic BCS-DBT generator (package synth): shapes, traps, determinism, anatomy and lesions.

The orientation rule is Duke's reader's, written out here on purpose (not imported from
``tasks.reader.frames``): the test pins the generator to the published rule, not to our reader.
(Over 400 lines: one suite for one public generator; splitting it would scatter its fixtures.)
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import pixel_array

from synth import generate as synth_generate
from synth.generate import generate_dataset
from synth.dicom_writer import write_dbt_dicom, write_dbt_dicom_frames

SMALL = dict(patients=20, rows=64, columns=48, frames=(8, 12))

FILE_PATHS = ["PatientID", "StudyUID", "View", "descriptive_path", "classic_path"]
LABELS = ["PatientID", "StudyUID", "View", "Normal", "Actionable", "Benign", "Cancer"]
BOXES = ["PatientID", "StudyUID", "View", "Subject", "Slice", "X", "Y", "Width", "Height",
         "Class", "AD", "VolumeSlices"]
REPORTS = ["report_id", "patient_id", "study_uid", "report_type", "report_date", "text"]
EXPECTED_CSVS = {
    "BCS-DBT file-paths-train-v2.csv", "BCS-DBT labels-train-v2.csv", "BCS-DBT boxes-train-v2.csv",
    "BCS-DBT-file-paths-validation-v2.csv", "BCS-DBT-labels-validation-v2.csv",
    "BCS-DBT-boxes-validation-v2.csv", "BCS-DBT-file-paths-test-v2.csv",
    "BCS-DBT-labels-test-v2.csv", "BCS-DBT-boxes-test-v2.csv",
}


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def na_variant(path: Path) -> Path:
    number, suffix = path.parent.name.split(".000000-")
    return path.parent.parent / f"{number}.000000-NA-{suffix}" / path.name


def resolve(root: Path, descriptive: str) -> Path:
    path = root / descriptive
    return path if path.exists() else na_variant(path)


def oriented_frame(path: Path, view: str, index: int) -> tuple[np.ndarray, bool]:
    """Duke's rule: the breast is on the side whose edge column sums larger; rotate if wrong."""
    frame = pixel_array(path, index=index).astype(np.float64)
    image_side = "R" if frame[:, 0].sum() < frame[:, -1].sum() else "L"
    rotate = image_side != view[0].upper()
    return (frame[::-1, ::-1] if rotate else frame), rotate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "a"
    summary = generate_dataset(root, seed=0, **SMALL)
    return root, summary


@pytest.fixture(scope="module")
def tables(dataset: tuple[Path, dict]) -> dict[str, list[dict[str, str]]]:
    root, summary = dataset
    out: dict[str, list[dict[str, str]]] = {"file_paths": [], "labels": [], "boxes": []}
    for split, names in summary["csv"].items():
        for kind in out:
            rows = read_csv(root / names[kind])[1]
            out[kind] += [dict(r, split=split) for r in rows]
    return out


def key(row: dict[str, str]) -> tuple[str, str, str]:
    return row["PatientID"], row["StudyUID"], row["View"]


def test_csv_names_columns_and_values(dataset, tables):
    root, summary = dataset
    assert {p.name for p in root.glob("*.csv")} == EXPECTED_CSVS | {"reports.csv"}
    assert summary["csv"]["train"]["labels"] == "BCS-DBT labels-train-v2.csv"
    assert summary["csv"]["test"]["boxes"] == "BCS-DBT-boxes-test-v2.csv"
    for split, names in summary["csv"].items():
        assert read_csv(root / names["file_paths"])[0] == FILE_PATHS
        assert read_csv(root / names["labels"])[0] == LABELS
        assert read_csv(root / names["boxes"])[0] == BOXES

    paths = {key(r): r for r in tables["file_paths"]}
    labels = {key(r): r for r in tables["labels"]}
    assert paths.keys() == labels.keys()
    assert len(paths) == summary["volumes"] == len(tables["file_paths"])
    for (pid, sid, view), r in paths.items():
        assert re.fullmatch(r"DBT-P\d{5}", pid) and re.fullmatch(r"DBT-S\d{5}", sid)
        assert view in ("lcc", "lmlo", "rcc", "rmlo")
        folder = f"Breast-Cancer-Screening-DBT/{pid}"
        assert re.fullmatch(
            rf"{folder}/01-01-2000-{sid}-\d{{5}}/\d{{5}}\.000000-\d{{5}}/1-1\.dcm",
            r["descriptive_path"],
        )
        assert re.fullmatch(rf"{folder}/[\d.]+/[\d.]+/1-1\.dcm", r["classic_path"])
    # A patient lives in one split only.
    split_of: dict[str, set[str]] = {}
    for r in tables["labels"]:
        split_of.setdefault(r["PatientID"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())
    assert {s.pop() for s in split_of.values()} == {"train", "validation", "test"}

    for r in labels.values():
        flags = [r[c] for c in LABELS[3:]]
        assert set(flags) <= {"0", "1"} and "1" in flags
    boxed = {key(b) for b in tables["boxes"]}
    positive = {k for k, r in labels.items() if r["Benign"] == "1" or r["Cancer"] == "1"}
    assert boxed == positive
    for b in tables["boxes"]:
        lab = labels[key(b)]
        # Most severe flag wins: a row that says Benign and Cancer has a cancer box.
        assert b["Class"] == ("cancer" if lab["Cancer"] == "1" else "benign")
        assert b["AD"] in ("0", "1")
        assert 0 <= int(b["Slice"]) < int(b["VolumeSlices"])
        assert b["Subject"] == str(int(b["PatientID"][5:]))
    double = [r for r in labels.values() if sum(int(r[c]) for c in LABELS[3:]) > 1]
    assert 1 <= len(double) <= 2 and all(r["Benign"] == r["Cancer"] == "1" for r in double)


def test_cohorts_sides_and_patient_structure(dataset, tables):
    _root, summary = dataset
    assert summary["positive_volumes"] >= 4
    assert summary["cohort_patients"]["cancer"] >= 2 and summary["cohort_patients"]["benign"] >= 2
    assert summary["cohort_patients"]["actionable"] >= 1
    assert sum(summary["cohort_patients"].values()) == summary["patients"] == 20
    assert summary["two_study_patients"] >= 1 and summary["missing_view_studies"] >= 1

    studies: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
    for r in tables["labels"]:
        studies.setdefault((r["PatientID"], r["StudyUID"]), {})[r["View"]] = r
    per_patient: dict[str, int] = {}
    for (pid, _sid), views in studies.items():
        per_patient[pid] = per_patient.get(pid, 0) + 1
        assert len(views) in (3, 4)
        flagged = {v for v, r in views.items() if r["Normal"] == "0"}
        if flagged:  # one side, both of its views; the other side normal
            assert len(views) == 4
            assert len({v[0] for v in flagged}) == 1 and len(flagged) == 2
    assert sum(n == 2 for n in per_patient.values()) == summary["two_study_patients"]
    assert sum(len(v) == 3 for v in studies.values()) == summary["missing_view_studies"]


def test_same_seed_same_bytes_and_other_seed_differs(dataset, tmp_path):
    root, summary = dataset
    again = generate_dataset(tmp_path / "same", seed=0, **SMALL)
    other = generate_dataset(tmp_path / "other", seed=1, **SMALL)
    first = tree_digest(root)
    assert len(first) > 80
    assert tree_digest(tmp_path / "same") == first
    same = tmp_path / "same"
    assert again == dict(summary, out=str(same), reports=str(same / "reports.csv"))
    second = tree_digest(tmp_path / "other")
    assert other["volumes"] > 0
    for name in ("BCS-DBT file-paths-train-v2.csv", "BCS-DBT labels-train-v2.csv",
                 "BCS-DBT boxes-train-v2.csv", "reports.csv"):
        assert first[name] != second[name], name
    dicom_hashes = {v for k, v in first.items() if k.endswith(".dcm")}
    assert not dicom_hashes & {v for k, v in second.items() if k.endswith(".dcm")}


def test_na_drift_and_classic_paths(dataset, tables):
    root, summary = dataset
    drift = set(summary["details"]["na_drift"])
    assert len(drift) == summary["na_drift_volumes"] >= 1
    assert 0.1 <= len(drift) / summary["volumes"] <= 0.3
    for r in tables["file_paths"]:
        descriptive = root / r["descriptive_path"]
        assert not (root / r["classic_path"]).exists()
        if "/".join(key(r)) in drift:
            assert not descriptive.exists()
            assert na_variant(descriptive).is_file()
        else:
            assert descriptive.is_file()
            assert not na_variant(descriptive).exists()
    # classic_path is built from the UIDs written in the file.
    r = tables["file_paths"][0]
    ds = pydicom.dcmread(resolve(root, r["descriptive_path"]), stop_before_pixels=True)
    _, _, study_uid, series_uid, _ = r["classic_path"].split("/")
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (study_uid, series_uid)


def test_dicom_attributes(dataset, tables):
    root, summary = dataset
    boxed = {key(b): int(b["VolumeSlices"]) for b in tables["boxes"]}
    wrong = set(summary["details"]["wrong_laterality"])
    assert len(wrong) == summary["wrong_laterality_volumes"] >= 1
    counts = []
    for r in tables["file_paths"]:
        path = resolve(root, r["descriptive_path"])
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.13.1.3"
        assert ds.Modality == "MG"
        assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 10, 0)
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.Rows, ds.Columns) == (64, 48)
        assert ds.PatientID == r["PatientID"] and ds.StudyID == r["StudyUID"]
        n = int(ds.NumberOfFrames)
        assert 8 <= n <= 12
        counts.append(n)
        if key(r) in boxed:
            assert n == boxed[key(r)]
        shared = ds.SharedFunctionalGroupsSequence[0]
        voi = shared.FrameVOILUTSequence[0]
        assert float(voi.WindowWidth) > 0
        side = r["View"][0].upper()
        laterality = shared.FrameAnatomySequence[0].FrameLaterality
        is_wrong = "/".join(key(r)) in wrong
        assert laterality == ({"L": "R", "R": "L"}[side] if is_wrong else side)
    assert len(set(counts)) > 1

    # The window covers the tissue: most breast pixels fall inside it.
    r = tables["file_paths"][0]
    path = resolve(root, r["descriptive_path"])
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    voi = ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    centre, width = float(voi.WindowCenter), float(voi.WindowWidth)
    frame = pixel_array(path, index=0)
    assert frame.dtype == np.uint16 and frame.max() < 1024
    tissue = frame[frame > 0]
    assert tissue.size > 0.3 * frame.size
    inside = (tissue >= centre - width / 2) & (tissue <= centre + width / 2)
    assert inside.mean() > 0.9


def test_orientation_rule_recovers_rotation_and_boxes_sit_on_lesions(dataset, tables):
    root, summary = dataset
    rotated = set(summary["details"]["rotated"])
    assert len(rotated) == summary["rotated_volumes"] >= 1
    found = set()
    for r in tables["file_paths"]:
        frame, rotate = oriented_frame(resolve(root, r["descriptive_path"]), r["View"], 0)
        if rotate:
            found.add("/".join(key(r)))
        # Oriented: chest wall (tissue) on the view's side, air on the other edge.
        right = r["View"][0] == "r"
        near, far = (frame[:, -1], frame[:, 0]) if right else (frame[:, 0], frame[:, -1])
        assert near.sum() > 0 and far.sum() == 0
    assert found == rotated

    paths = {key(r): r["descriptive_path"] for r in tables["file_paths"]}
    assert any("/".join(key(b)) in rotated for b in tables["boxes"])
    for b in tables["boxes"]:
        path = resolve(root, paths[key(b)])
        s, n = int(b["Slice"]), int(b["VolumeSlices"])
        x, y, w, h = (int(b[c]) for c in ("X", "Y", "Width", "Height"))
        assert 0.05 * 48 <= w <= 0.3 * 48
        frame, _ = oriented_frame(path, b["View"], s)
        far_frame, _ = oriented_frame(path, b["View"], 0 if s > n - 1 - s else n - 1)
        in_box = frame[y:y + h, x:x + w].mean()
        # Same-size regions of tissue elsewhere on the boxed slice (inside the breast, off the box).
        threshold = 0.5 * np.median(frame[frame > 0])
        others = [
            frame[yy:yy + h, xx:xx + w].mean()
            for yy in range(0, frame.shape[0] - h + 1, 2)
            for xx in range(0, frame.shape[1] - w + 1, 2)
            if not (xx < x + w and x < xx + w and yy < y + h and y < yy + h)
            and frame[yy:yy + h, xx:xx + w].min() > threshold
        ]
        assert len(others) >= 10
        assert in_box > np.median(others) + 25, b
        assert in_box > far_frame[y:y + h, x:x + w].mean() + 15, b


def test_summary_states_lesion_visibility_that_the_pixels_bear_out(dataset, tables):
    root, summary = dataset
    vis = summary["lesion_visibility"]
    assert vis["lesions"] == len(tables["boxes"]) == summary["boxes"]
    sides = [min(int(b["Width"]), int(b["Height"])) / 64 for b in tables["boxes"]]  # 64 x 48 frames
    assert vis["size_of_frame"]["min"] == round(min(sides), 3) and vis["size_of_frame"]["max"] == round(max(sides), 3)
    assert vis["smallest_px_at"]["64"] == round(min(sides) * 64, 1) >= 4  # learnable at the demo's 64 px
    assert 0.3 <= vis["contrast_of_window"]["min"] <= vis["contrast_of_window"]["max"] <= 1
    assert vis["contrast_to_texture"]["min"] >= 3
    assert "64 px" in vis["note"] and "display window" in vis["note"]

    # The stated contrast is there on the boxed slice: box centre vs the tissue around the box.
    paths = {key(r): r["descriptive_path"] for r in tables["file_paths"]}
    for b in tables["boxes"]:
        path = resolve(root, paths[key(b)])
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        voi = ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
        low = float(voi.WindowCenter) - float(voi.WindowWidth) / 2
        frame, _ = oriented_frame(path, b["View"], int(b["Slice"]))
        shown = np.clip((frame - low) / float(voi.WindowWidth), 0, 1)
        x, y, w, h = (int(b[c]) for c in ("X", "Y", "Width", "Height"))
        centre = shown[y + h // 3:y + h - h // 3, x + w // 3:x + w - w // 3]
        around = shown[max(0, y - h):y + 2 * h, max(0, x - w):x + 2 * w].copy()
        around[min(h, y):min(h, y) + h, min(w, x):min(w, x) + w] = np.nan  # the box itself
        tissue = around[np.isfinite(around) & (around > 0)]
        assert np.median(centre) - np.median(tissue) >= 0.5 * vis["contrast_of_window"]["min"], b


def test_reports(dataset, tables):
    root, summary = dataset
    assert summary["reports"] == str(root / "reports.csv")
    header, rows = read_csv(root / "reports.csv")
    assert header == REPORTS and len(rows) == summary["report_rows"]
    assert [r["report_id"] for r in rows] == [f"R{i:06d}" for i in range(1, len(rows) + 1)]
    person = re.compile(r"Patient: \w+ Synthetic-\w+, DOB \d{4}-\d\d-\d\d")
    assert all(person.search(r["text"]) for r in rows)

    start, end = dt.date(2014, 1, 1), dt.date(2018, 1, 30)

    def date(r):
        return dt.date.fromisoformat(r["report_date"])

    radiology = [
        r for r in rows if r["report_type"] == "radiology" and r["report_date"] != "2016-13-45"
    ]
    in_scope = [
        r for r in radiology
        if start <= date(r) <= end and "tomosynthesis" in r["text"].lower()
    ]
    cases = {m for r in in_scope for m in re.findall(r"tomosynthesis", r["text"], flags=re.I)}
    assert len(cases) >= 2  # the spelling varies
    studies = {(r["PatientID"], r["StudyUID"]) for r in tables["labels"]}
    assert {(r["patient_id"], r["study_uid"]) for r in in_scope} == studies
    assert all((r["patient_id"], r["study_uid"]) in studies for r in rows)

    # A study's cohort is its most severe flag; its finding side is that of its flagged views.
    order = ["Normal", "Actionable", "Benign", "Cancer"]
    severity: dict[tuple[str, str], str] = {}
    sides: dict[tuple[str, str], set[str]] = {}
    for r in tables["labels"]:
        k = (r["PatientID"], r["StudyUID"])
        worst = max((c for c in order if r[c] == "1"), key=order.index)
        severity[k] = max(severity.get(k, "Normal"), worst, key=order.index)
        if worst != "Normal":
            sides.setdefault(k, set()).add({"l": "left", "r": "right"}[r["View"][0]])
    birads = re.compile(r"bi-?rads:?\s*(?:category\s*)?(\d)", re.I)
    pathology = [r for r in rows if r["report_type"] == "pathology"]
    for r in in_scope:
        k = (r["patient_id"], r["study_uid"])
        category = int(birads.search(r["text"]).group(1))
        allowed = {"Cancer": {4, 5}, "Benign": {4, 5}, "Actionable": {0, 3, 4},
                   "Normal": {1, 2}}[severity[k]]
        assert category in allowed, (k, category, r["text"])
        if severity.get(k) in ("Cancer", "Benign"):
            reports = [p for p in pathology if (p["patient_id"], p["study_uid"]) == k]
            assert len(reports) == 1
            text = reports[0]["text"].lower()
            (side,) = sides[k]
            assert f"{side} breast" in text
            assert 5 <= (date(reports[0]) - date(r)).days <= 120
            if severity[k] == "Cancer":
                assert "carcinoma" in text or "dcis" in text
            else:
                benign_words = ("fibroadenoma", "fibrocystic", "negative for malignancy",
                                "no evidence of carcinoma")
                assert any(w in text for w in benign_words)
    # Distractors, one per rule of the report filter.
    assert any(r["report_date"] == "2016-13-45" for r in rows)
    assert any(r["report_type"] == "cardiology" for r in rows)
    assert any(not start <= date(r) <= end for r in radiology)
    assert any("tomosynthesis" not in r["text"].lower() for r in radiology)
    assert any("breast" not in r["text"].lower() for r in pathology)


def test_streamed_writer_matches_array_writer(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 1024, size=(3, 40, 36), dtype=np.uint16)
    common = dict(patient_id="DBT-P00001", study_uid="DBT-S00001", view="rmlo",
                  window_center=512, window_width=1024, frame_laterality="L")
    a = write_dbt_dicom(tmp_path / "a.dcm", frames, **common)
    shape = dict(rows=40, columns=36)
    b = write_dbt_dicom_frames(tmp_path / "b.dcm", iter(frames), n_frames=3, **shape, **common)
    assert a.read_bytes() == b.read_bytes()
    np.testing.assert_array_equal(pixel_array(b, index=2), frames[2])
    with pytest.raises(ValueError, match="expected n_frames=4"):
        write_dbt_dicom_frames(tmp_path / "c.dcm", iter(frames), n_frames=4, **shape, **common)


def test_worker_processes_give_the_same_bytes(tmp_path, monkeypatch):
    small = dict(patients=3, seed=5, rows=48, columns=40, frames=(3, 5), reports=False)
    monkeypatch.setattr(synth_generate, "_WORKERS", 1)
    generate_dataset(tmp_path / "serial", **small)
    monkeypatch.setattr(synth_generate, "_WORKERS", 2)
    generate_dataset(tmp_path / "parallel", **small)
    serial = tree_digest(tmp_path / "serial")
    assert serial and tree_digest(tmp_path / "parallel") == serial


def test_positive_fraction_and_no_reports(tmp_path):
    summary = generate_dataset(tmp_path / "pf", patients=20, seed=3, rows=32, columns=32,
                               frames=(2, 3), positive_fraction=0.5, reports=False)
    assert summary["cohort_patients"]["benign"] == 5 and summary["cohort_patients"]["cancer"] == 5
    assert summary["reports"] is None and not (tmp_path / "pf" / "reports.csv").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(patients=0), "patients=0"),
        (dict(rows=16), "at least 32"),
        (dict(frames=(5, 3)), "frames=\\(5, 3\\)"),
        (dict(positive_fraction=1.5), "positive_fraction=1.5"),
        (dict(seed=-1), "seed=-1"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_dataset(tmp_path / "bad", **kwargs)
