"""Extraction records: reuse on rerun, only new volumes extracted, rejects recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tasks.prepare.cohorts import build_volume_table, cohorts_from_labels
from tasks.prepare.bcs_csv import load_bcs_tables
from tasks.prepare.extract import extract_shard, split_finished
from tasks.prepare.slices import select_slices


@pytest.fixture(scope="module")
def plan_and_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    from synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("extract-data")
    generate_dataset(root, patients=20, seed=5, rows=64, columns=48, frames=(6, 9), reports=False)
    tables = load_bcs_tables(root)
    cohorts, rejects = cohorts_from_labels(tables.labels)
    volumes = build_volume_table(tables.file_paths, cohorts, tables.boxes, cohort_rejects=rejects)
    plan = select_slices(volumes, tables.boxes, strategy="single-slice", seed=0)
    return plan, root


def _jobs(plan: pd.DataFrame) -> list[dict]:
    return plan[["patient_id", "study_uid", "view", "descriptive_path", "classic_path", "frames_rule"]].to_dict("records")


def test_adding_patients_extracts_only_theirs(plan_and_root, tmp_path) -> None:
    plan, root = plan_and_root
    jobs = _jobs(plan)
    patients = sorted({j["patient_id"] for j in jobs})
    first = [j for j in jobs if j["patient_id"] in patients[: len(patients) // 2]]
    out = str(tmp_path / "out")
    result = extract_shard(first, data_root=str(root), out_dir=out, image_size=32, seed=0)
    assert result["decoded"] == len(first)
    pngs = {p: p.stat().st_mtime_ns for p in Path(out).rglob("*.png")}

    done, todo = split_finished(jobs, data_root=str(root), out_dir=out, image_size=32, seed=0)
    assert len(done) == len(first) and len(todo) == len(jobs) - len(first)
    again = extract_shard(jobs, data_root=str(root), out_dir=out, image_size=32, seed=0)
    assert again["decoded"] == len(jobs) - len(first)
    assert {p: p.stat().st_mtime_ns for p in pngs} == pngs

    # A different image size is different work.
    _, todo = split_finished(jobs, data_root=str(root), out_dir=out, image_size=48, seed=0)
    assert len(todo) == len(jobs)


def test_missing_and_corrupt_volumes_become_rejects(plan_and_root, tmp_path) -> None:
    plan, root = plan_and_root
    jobs = _jobs(plan)[:3]
    broken = dict(jobs[0], descriptive_path="Breast-Cancer-Screening-DBT/DBT-P99999/x/y/1-1.dcm",
                  classic_path="Breast-Cancer-Screening-DBT/DBT-P99999/a/b/1-1.dcm", patient_id="DBT-P99999")
    corrupt_file = tmp_path / "data" / "Breast-Cancer-Screening-DBT" / "DBT-P88888" / "s" / "1.000000-1" / "1-1.dcm"
    corrupt_file.parent.mkdir(parents=True)
    corrupt_file.write_bytes(b"this is not a DICOM file" * 10)
    corrupt = dict(jobs[1], patient_id="DBT-P88888",
                   descriptive_path="Breast-Cancer-Screening-DBT/DBT-P88888/s/1.000000-1/1-1.dcm")
    out = tmp_path / "out"
    result = extract_shard([broken], data_root=str(root), out_dir=str(out), image_size=32, seed=0)
    record = json.loads(Path(result["records"][0]).read_text())
    assert record["reject"].startswith("missing volume: not found")
    result = extract_shard([corrupt], data_root=str(tmp_path / "data"), out_dir=str(out), image_size=32, seed=0)
    record = json.loads(Path(result["records"][0]).read_text())
    assert "1-1.dcm" in record["reject"] and record["frames"] == []
    good = extract_shard([jobs[2]], data_root=str(root), out_dir=str(out), image_size=32, seed=0)
    assert json.loads(Path(good["records"][0]).read_text())["reject"] is None


def test_single_slice_is_one_image_per_patient_on_the_generated_dataset(plan_and_root, tmp_path) -> None:
    """Method 2: every patient contributes exactly one image, a positive its largest lesion's slice."""
    from tasks.prepare.manifest import build_manifest

    plan, root = plan_and_root
    out = tmp_path / "out"
    result = extract_shard(_jobs(plan), data_root=str(root), out_dir=str(out), image_size=32, seed=0)
    splits = pd.DataFrame({"patient_id": sorted(plan["patient_id"].unique()), "split": "test"})
    manifest, rejects = build_manifest(plan, splits, result["records"], out_dir=out, lesion_window=2)
    assert rejects.empty
    assert manifest["label"].nunique() == 2  # the dataset has both kinds of patient
    assert manifest.groupby("patient_id").size().eq(1).all()
    assert len(manifest) == plan["patient_id"].nunique()
    positives = manifest[manifest["label"] == 1]
    assert positives["box_x"].notna().all() and positives["slice_index"].eq(positives["box_slice"]).all()
    tables = load_bcs_tables(root)
    boxes = tables.boxes.assign(area=tables.boxes["width"] * tables.boxes["height"])
    largest = boxes.groupby("patient_id")["area"].max()
    for _, row in positives.iterrows():
        own = boxes[(boxes["patient_id"] == row["patient_id"]) & (boxes["study_uid"] == row["study_uid"])
                    & (boxes["view"] == row["view"]) & (boxes["slice"] == row["slice_index"])]
        assert own["area"].max() == largest[row["patient_id"]]


def test_full_resolution_is_different_work_and_records_the_level(plan_and_root, tmp_path) -> None:
    plan, root = plan_and_root
    jobs = _jobs(plan)[:3]
    out = str(tmp_path / "out")
    result = extract_shard(jobs, data_root=str(root), out_dir=out, image_size=32, seed=0)
    frames = [f for r in result["records"] for f in json.loads(Path(r).read_text())["frames"]]
    assert frames and all(f["decode_level"] == 1 and f["decode_note"] is None for f in frames)  # 64 x 48 -> 32
    _, todo = split_finished(jobs, data_root=str(root), out_dir=out, image_size=32, seed=0, full_resolution=True)
    assert len(todo) == len(jobs)
    full = extract_shard(jobs, data_root=str(root), out_dir=out, image_size=32, seed=0, full_resolution=True)
    frames = [f for r in full["records"] for f in json.loads(Path(r).read_text())["frames"]]
    assert full["decoded"] == len(jobs) and all(f["decode_level"] == 0 for f in frames)


def test_shards_balance_frame_counts() -> None:
    from tasks.prepare.extract import balanced_shards, estimated_frames

    def job(i: int, rule: str) -> dict:
        return {"patient_id": f"P{i:03d}", "study_uid": "S", "view": "rcc", "frames_rule": rule}

    # Positives (every frame) come in patient order next to each other: cut in order, the
    # first shard would hold all of them.
    jobs = [job(i, "all") for i in range(4)] + [job(i, "fraction:0.15") for i in range(4, 16)]
    shards = balanced_shards(jobs, 4)
    assert len(shards) == 4 and sorted(len(s) for s in shards) == [4, 4, 4, 4]
    loads = [sum(estimated_frames(j) + 1 for j in s) for s in shards]
    assert max(loads) - min(loads) <= estimated_frames(job(0, "fraction:0.15")) + 1
    assert loads == sorted(loads, reverse=True)  # heaviest first: the order a pool runs them
    assert sorted(j["patient_id"] for s in shards for j in s) == [j["patient_id"] for j in jobs]
    for shard in shards:
        assert [j["patient_id"] for j in shard] == sorted(j["patient_id"] for j in shard)
    assert balanced_shards(jobs, 4) == shards  # deterministic
    assert balanced_shards([], 4) == []


def test_estimated_frames_per_rule() -> None:
    from tasks.prepare.extract import estimated_frames

    assert estimated_frames({"frames_rule": "all"}, 60) == 60
    assert estimated_frames({"frames_rule": "middle"}, 60) == 1
    assert estimated_frames({"frames_rule": "frames:3,9"}, 60) == 2
    assert estimated_frames({"frames_rule": "lesion:2:10,40"}, 60) == 10
    assert estimated_frames({"frames_rule": "fraction:0.15"}, 60) == 9


def test_small_plans_are_estimated_below_the_serial_threshold(plan_and_root) -> None:
    from tasks.prepare.extract import SERIAL_BELOW_SECONDS, estimated_seconds

    plan, root = plan_and_root  # 64 x 48 frames: milliseconds of decoding
    seconds = estimated_seconds(_jobs(plan), data_root=str(root), image_size=32)
    assert 0 < seconds < SERIAL_BELOW_SECONDS
    assert estimated_seconds([], data_root=str(root), image_size=32) == 0


def test_patient_ids_become_visible_distinct_folders_inside_slices(tmp_path) -> None:
    from tasks.prepare.extract import volume_dir

    out = tmp_path / "out"
    ids = ["../../x", "x", ".hidden", "a/b", "a_b", "a b", ".."]
    folders = [volume_dir(out, pid, "DBT-S1", "rcc") for pid in ids]
    patient_folders = [f.parent.parent for f in folders]
    assert len({str(f) for f in patient_folders}) == len(ids)
    for folder in patient_folders:
        assert folder.parent == out / "slices"
        assert not folder.name.startswith(".")
        assert folder.resolve().is_relative_to((out / "slices").resolve())
    assert volume_dir(out, "DBT-P00013", "DBT-S00163", "rmlo") == out / "slices/DBT-P00013/DBT-S00163/rmlo"


def test_blank_volume_is_rejected_as_blank_frames(make_dbt, tmp_path) -> None:
    """All-zero (or constant) pixel data is a reject with a reason, not black PNGs."""
    import numpy as np

    from tasks.prepare.rejects import reason_code, reject_reason

    root = tmp_path / "data"
    rel = "Breast-Cancer-Screening-DBT/DBT-P00001/s/1.000000-1/1-1.dcm"
    for value, name in ((0, "zero"), (700, "constant")):
        path, _ = make_dbt(f"{name}.dcm", frames=np.full((5, 64, 48), value, dtype=np.uint16))
        target = root / name / rel
        target.parent.mkdir(parents=True)
        path.rename(target)
        job = {"patient_id": "DBT-P00001", "study_uid": "DBT-S00001", "view": "rcc", "descriptive_path": rel,
               "classic_path": None, "frames_rule": "all"}
        result = extract_shard([job], data_root=str(root / name), out_dir=str(tmp_path / f"out-{name}"),
                               image_size=32, seed=0)
        record = json.loads(Path(result["records"][0]).read_text())
        assert reason_code(reject_reason(record["reject"])) == "blank-frames", record["reject"]
        assert "5 of the 5 selected frames" in record["reject"] and record["frames"] == []
        assert not list((tmp_path / f"out-{name}").rglob("*.png"))


def test_phantom_volume_is_not_blank(dbt_volume, tmp_path) -> None:
    """The control: a volume with an image passes the blank check."""
    path, _ = dbt_volume
    root = tmp_path / "data"
    rel = "Breast-Cancer-Screening-DBT/DBT-P00001/s/1.000000-1/1-1.dcm"
    (root / rel).parent.mkdir(parents=True)
    path.rename(root / rel)
    job = {"patient_id": "DBT-P00001", "study_uid": "DBT-S00001", "view": "rcc", "descriptive_path": rel,
           "classic_path": None, "frames_rule": "all"}
    result = extract_shard([job], data_root=str(root), out_dir=str(tmp_path / "out"), image_size=32, seed=0)
    record = json.loads(Path(result["records"][0]).read_text())
    assert record["reject"] is None and len(record["frames"]) == 5


def test_same_bytes_under_two_patients_are_both_rejected_as_duplicate_content() -> None:
    """Identical content under two patient ids is a leak: both volumes are rejected."""
    from tasks.prepare.manifest import duplicate_content

    records = [
        {"patient_id": "DBT-P1", "study_uid": "S1", "view": "lcc", "source_sha256": "a" * 64, "source_path": "p1.dcm"},
        {"patient_id": "DBT-P2", "study_uid": "S2", "view": "rcc", "source_sha256": "a" * 64, "source_path": "p2.dcm"},
        {"patient_id": "DBT-P3", "study_uid": "S3", "view": "lcc", "source_sha256": "b" * 64, "source_path": "p3.dcm"},
        # One patient's two views with the same bytes is not a cross-patient leak.
        {"patient_id": "DBT-P3", "study_uid": "S3", "view": "rcc", "source_sha256": "c" * 64, "source_path": "p4.dcm"},
    ]
    found = duplicate_content(records)
    assert set(found) == {("DBT-P1", "S1", "lcc"), ("DBT-P2", "S2", "rcc")}
    reason = found[("DBT-P1", "S1", "lcc")]
    assert reason.startswith("duplicate-content: ") and "DBT-P1" in reason and "DBT-P2" in reason
    assert "p1.dcm" in reason and "p2.dcm" in reason
