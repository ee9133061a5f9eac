"""Tests for tasks.prepare.slices: resolving volume paths on disk, frame rules and slice selection."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from tasks.prepare.frame_rules import FrameRule, resolve_frames, volume_key
from tasks.prepare.locate import VolumeResolver, na_variants
from tasks.prepare.slices import PLAN_COLUMNS, frame_boxes, select_slices
from synth.layout import deterministic_uid
from synth.dicom_writer import write_dbt_dicom

COLLECTION = "Breast-Cancer-Screening-DBT"
REPO_ROOT = Path(__file__).resolve().parents[3]


# --------------------------------------------------------------------------- path resolution


def resolve_volume_path(data_root: Path, descriptive: str, classic: str, pid: str) -> tuple[Path | None, str]:
    """One volume through a fresh resolver."""
    return VolumeResolver(data_root).resolve(descriptive, classic, pid)


def plan_row_frames(row: pd.Series, n_frames: int, *, seed: int) -> list[int]:
    """The frames a plan row's rule selects, as the extractor resolves them."""
    key = volume_key(row["patient_id"], row["study_uid"], row["view"])
    return resolve_frames(str(row["frames_rule"]), n_frames, seed=seed, key=key)


def csv_paths(pid: str, sid: str, view: str, series_folder: str) -> tuple[str, str]:
    """(descriptive_path, classic_path) as the file-paths CSV writes them."""
    descriptive = f"{COLLECTION}/{pid}/01-01-2000-{sid}-MAMMO screening-33603/{series_folder}/1-1.dcm"
    classic = f"{COLLECTION}/{pid}/{deterministic_uid(pid, sid)}/{deterministic_uid(pid, sid, view)}/1-1.dcm"
    return descriptive, classic


def write_volume(base: Path, relative: str, pid: str, sid: str, view: str) -> Path:
    frames = np.zeros((2, 4, 4), dtype=np.uint16)
    return write_dbt_dicom(base / relative, frames, patient_id=pid, study_uid=sid, view=view,
                           window_center=512, window_width=1024, transfer_syntax=ExplicitVRLittleEndian)


def test_na_variants_both_directions() -> None:
    assert na_variants("20566.000000-32081") == ["20566.000000-NA-32081"]
    assert na_variants("20566.000000-NA-32081") == ["20566.000000-32081"]
    assert na_variants("nohyphen") == []


def test_descriptive_path_as_written(tmp_path: Path) -> None:
    descriptive, classic = csv_paths("DBT-P00001", "DBT-S00001", "lcc", "1.000000-NA-11111")
    written = write_volume(tmp_path, descriptive, "DBT-P00001", "DBT-S00001", "lcc")
    assert resolve_volume_path(tmp_path, descriptive, classic, "DBT-P00001") == (written, "descriptive")


def test_na_drift_descriptive_missing_na_variant_present(tmp_path: Path) -> None:
    descriptive, classic = csv_paths("DBT-P00001", "DBT-S00001", "lcc", "20566.000000-32081")
    on_disk = descriptive.replace("20566.000000-32081", "20566.000000-NA-32081")
    written = write_volume(tmp_path, on_disk, "DBT-P00001", "DBT-S00001", "lcc")
    assert not (tmp_path / descriptive).exists()
    assert resolve_volume_path(tmp_path, descriptive, classic, "DBT-P00001") == (written, "na-variant")


def test_reverse_na_drift(tmp_path: Path) -> None:
    descriptive, classic = csv_paths("DBT-P00001", "DBT-S00001", "lcc", "20566.000000-NA-32081")
    on_disk = descriptive.replace("20566.000000-NA-32081", "20566.000000-32081")
    written = write_volume(tmp_path, on_disk, "DBT-P00001", "DBT-S00001", "lcc")
    assert resolve_volume_path(tmp_path, descriptive, classic, "DBT-P00001") == (written, "na-variant")


def test_classic_path_fallback(tmp_path: Path) -> None:
    descriptive, classic = csv_paths("DBT-P00001", "DBT-S00001", "lcc", "1.000000-NA-11111")
    written = write_volume(tmp_path, classic, "DBT-P00001", "DBT-S00001", "lcc")
    assert resolve_volume_path(tmp_path, descriptive, classic, "DBT-P00001") == (written, "classic")


def test_search_fallback_matches_series_instance_uid(tmp_path: Path) -> None:
    pid, sid = "DBT-P00001", "DBT-S00001"
    # Both views sit in folders named unlike anything in the CSV; only the header tells them apart.
    other = write_volume(tmp_path, f"{COLLECTION}/{pid}/renamed-study/a-series/1-1.dcm", pid, sid, "rcc")
    target = write_volume(tmp_path, f"{COLLECTION}/{pid}/renamed-study/b-series/1-1.dcm", pid, sid, "lcc")
    descriptive, classic = csv_paths(pid, sid, "lcc", "1.000000-NA-11111")
    assert resolve_volume_path(tmp_path, descriptive, classic, pid) == (target, "search")
    descriptive, classic = csv_paths(pid, sid, "rcc", "1.000000-NA-22222")
    assert resolve_volume_path(tmp_path, descriptive, classic, pid) == (other, "search")


def test_search_fallback_by_study_and_series_number(tmp_path: Path) -> None:
    pid = "DBT-P00001"
    write_volume(tmp_path, f"{COLLECTION}/{pid}/01-01-2000-DBT-S00002-x-1/7.000000-NA-12345/1-1.dcm", pid, "DBT-S00002", "lcc")
    target = write_volume(tmp_path, f"{COLLECTION}/{pid}/01-01-2000-DBT-S00001-renamed-1/7.000000-NA-12345/1-1.dcm",
                          pid, "DBT-S00001", "lcc")
    descriptive, _ = csv_paths(pid, "DBT-S00001", "lcc", "7.000000-12345")
    classic = f"{COLLECTION}/{pid}/9.9.9/9.9.9.9/1-1.dcm"  # a series UID no file carries
    assert resolve_volume_path(tmp_path, descriptive, classic, pid) == (target, "search")
    # No candidate's study folder carries DBT-S00003: not found rather than a guess.
    descriptive, _ = csv_paths(pid, "DBT-S00003", "lcc", "7.000000-12345")
    path, how = resolve_volume_path(tmp_path, descriptive, classic, pid)
    assert path is None and how.startswith("not found")


def test_truly_missing_volume_reports_what_was_tried(tmp_path: Path) -> None:
    pid = "DBT-P00001"
    write_volume(tmp_path, f"{COLLECTION}/{pid}/some-study/1.000000-NA-99999/1-1.dcm", pid, "DBT-S00009", "rmlo")
    descriptive, classic = csv_paths(pid, "DBT-S00001", "lcc", "20566.000000-32081")
    path, how = resolve_volume_path(tmp_path, descriptive, classic, pid)
    assert path is None
    assert how.startswith("not found: tried ")
    assert descriptive in how and "20566.000000-NA-32081" in how and classic in how
    assert "SeriesInstanceUID" in how

    path, how = resolve_volume_path(tmp_path, *csv_paths("DBT-P00404", "DBT-S00404", "lcc", "1.0-2"), "DBT-P00404")
    assert path is None and "no folder for patient DBT-P00404" in how


def test_data_root_above_the_manifest_folder(tmp_path: Path) -> None:
    descriptive, classic = csv_paths("DBT-P00001", "DBT-S00001", "lcc", "20566.000000-32081")
    on_disk = descriptive.replace("-32081", "-NA-32081")
    written = write_volume(tmp_path / "download" / "manifest-1617905855234", on_disk, "DBT-P00001", "DBT-S00001", "lcc")
    assert resolve_volume_path(tmp_path / "download", descriptive, classic, "DBT-P00001") == (written, "na-variant")
    # Pointing at the collection folder itself works too.
    collection = tmp_path / "download" / "manifest-1617905855234" / COLLECTION
    assert resolve_volume_path(collection, descriptive, classic, "DBT-P00001")[1] == "na-variant"


def test_bulk_resolution_lists_each_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = []
    for view, series in (("lcc", "1.000000-11111"), ("lmlo", "2.000000-22222"), ("rcc", "3.000000-33333")):
        descriptive, classic = csv_paths("DBT-P00001", "DBT-S00001", view, series)
        write_volume(tmp_path, descriptive.replace(series, series.replace("-", "-NA-", 1)), "DBT-P00001", "DBT-S00001", view)
        rows.append(("DBT-P00001", "DBT-S00001", view, descriptive, classic))
    rows.append(("DBT-P00002", "DBT-S00002", "lcc", *csv_paths("DBT-P00002", "DBT-S00002", "lcc", "1.0-1")))
    volumes = pd.DataFrame(rows, columns=["patient_id", "study_uid", "view", "descriptive_path", "classic_path"])

    listed: Counter[str] = Counter()
    real_scandir = os.scandir

    def counting_scandir(path: os.PathLike[str] | str = ".") -> object:
        listed[str(path)] += 1
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    resolver = VolumeResolver(tmp_path)
    resolved = [resolver.resolve(r.descriptive_path, r.classic_path, r.patient_id, study_uid=r.study_uid)
                for r in volumes.itertuples(index=False)]
    assert [how for _, how in resolved][:3] == ["na-variant"] * 3
    assert [path is not None for path, _ in resolved] == [True, True, True, False]
    assert resolved[3][1].startswith("not found")
    assert listed and max(listed.values()) == 1  # every folder listed at most once


# --------------------------------------------------------------------------- frame rules


def test_resolve_frames_simple_rules() -> None:
    assert resolve_frames("all", 5, seed=0, key="k") == [0, 1, 2, 3, 4]
    assert resolve_frames("middle", 5, seed=0, key="k") == [2]
    assert resolve_frames("middle", 70, seed=0, key="k") == [35]
    assert resolve_frames("frames:30,12,12", 70, seed=0, key="k") == [12, 30]


def test_resolve_frames_out_of_range_names_volume_frame_and_count() -> None:
    with pytest.raises(ValueError) as err:
        resolve_frames("frames:12,70", 70, seed=0, key="DBT-P00001/DBT-S00001/lcc")
    assert "DBT-P00001/DBT-S00001/lcc" in str(err.value) and "frame 70" in str(err.value) and "70 frames" in str(err.value)
    for rule in ("bogus", "fraction:0", "fraction:1.5", "frames:a", "all:3"):
        with pytest.raises(ValueError):
            resolve_frames(rule, 10, seed=0, key="k")
    with pytest.raises(ValueError):
        resolve_frames("all", 0, seed=0, key="k")


@pytest.mark.parametrize(("fraction", "n_frames", "expected"), [(0.15, 70, 10), (0.15, 49, 7), (0.15, 3, 1), (0.01, 50, 1), (1.0, 9, 9)])
def test_fraction_count(fraction: float, n_frames: int, expected: int) -> None:
    frames = resolve_frames(f"fraction:{fraction}", n_frames, seed=3, key="k")
    assert len(frames) == expected == max(1, round(fraction * n_frames))
    assert frames == sorted(set(frames)) and all(0 <= f < n_frames for f in frames)


def test_fraction_is_deterministic_per_seed_and_key() -> None:
    a = resolve_frames("fraction:0.15", 70, seed=0, key="P/S/lcc")
    assert a == resolve_frames("fraction:0.15", 70, seed=0, key="P/S/lcc")
    keys = [f"P{i}/S/lcc" for i in range(20)]
    samples = {tuple(resolve_frames("fraction:0.15", 70, seed=0, key=k)) for k in keys}
    assert len(samples) > 15  # volumes get different frames
    reseeded = {tuple(resolve_frames("fraction:0.15", 70, seed=1, key=k)) for k in keys}
    assert samples != reseeded


def test_fraction_is_the_same_in_another_process() -> None:
    here = [resolve_frames("fraction:0.15", 70, seed=7, key=f"DBT-P{i:05d}/S/rcc") for i in range(5)]
    code = (
        "import json; from tasks.prepare.frame_rules import resolve_frames; "
        "print(json.dumps([resolve_frames('fraction:0.15', 70, seed=7, key=f'DBT-P{i:05d}/S/rcc') for i in range(5)]))"
    )
    for hash_seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True)
        assert json.loads(out.stdout) == here


def test_frame_boxes_window() -> None:
    boxes = [{"slice": 10, "x": 1, "y": 2, "width": 3, "height": 4}, {"slice": 20, "x": 5, "y": 6, "width": 7, "height": 8}]
    assert frame_boxes(boxes, 10, 0) == [boxes[0]]
    assert frame_boxes(boxes, 12, 2) == [boxes[0]]
    assert frame_boxes(boxes, 13, 2) == []
    assert frame_boxes(json.dumps(boxes), 18, 2) == [boxes[1]]
    assert frame_boxes(pd.DataFrame(boxes), 15, 5) == boxes


# --------------------------------------------------------------------------- selection


def volume_table(rows: list[tuple[str, str, str, str, str | None]]) -> pd.DataFrame:
    """rows: (patient_id, study_uid, view, cohort, excluded_reason)."""
    frame = pd.DataFrame(rows, columns=["patient_id", "study_uid", "view", "cohort", "excluded_reason"])
    frame["label"] = frame["cohort"].map({"normal": 0, "benign": 1, "cancer": 1}).astype("Int8")
    frame["descriptive_path"] = "d/" + frame["patient_id"] + "/" + frame["view"]
    frame["classic_path"] = "c/" + frame["patient_id"] + "/" + frame["view"]
    return frame


def box_table(rows: list[tuple[str, str, str, int, int]]) -> pd.DataFrame:
    """rows: (patient_id, study_uid, view, slice, volume_slices)."""
    frame = pd.DataFrame(rows, columns=["patient_id", "study_uid", "view", "slice", "volume_slices"])
    frame["x"], frame["y"], frame["width"], frame["height"] = 10, 20, 30, 40
    frame["box_class"], frame["ad"], frame["subject"] = "cancer", 0, 1
    return frame


VOLUMES = volume_table([
    ("P1", "S1", "lcc", "normal", None), ("P1", "S1", "lmlo", "normal", None),
    ("P1", "S1", "rcc", "normal", None), ("P1", "S1", "rmlo", "normal", None),
    ("P2", "S2", "lcc", "normal", None), ("P2", "S2", "rcc", "cancer", None),
    ("P3", "S3", "lcc", "benign", None),
    ("P4", "S4", "lcc", "normal", None), ("P4", "S5", "lcc", "normal", None),
    ("P5", "S6", "lcc", "actionable", "actionable"),
    ("P6", "S7", "rcc", "cancer", None),  # no box
])
BOXES = box_table([("P2", "S2", "rcc", 30, 60), ("P2", "S2", "rcc", 12, 60), ("P3", "S3", "lcc", 1, 50),
                   ("P3", "S3", "lcc", 49, 50)])


def rules(plan: pd.DataFrame) -> dict[str, str]:
    return dict(zip(plan["patient_id"] + "/" + plan["study_uid"] + "/" + plan["view"], plan["frames_rule"]))


def test_all_slices_rules() -> None:
    plan = select_slices(VOLUMES, BOXES, strategy="all-slices", normal_fraction=0.15)
    assert list(plan.columns[: len(PLAN_COLUMNS)]) == PLAN_COLUMNS
    got = rules(plan)
    assert "P5/S6/lcc" not in got  # excluded (actionable)
    assert got["P2/S2/rcc"] == got["P6/S7/rcc"] == got["P3/S3/lcc"] == "all"
    assert {got[k] for k in ("P1/S1/lcc", "P2/S2/lcc", "P4/S5/lcc")} == {"fraction:0.15"}
    assert len(plan) == 10
    assert (plan.loc[plan["frames_rule"] == "all", "label"] == 1).all()
    assert (plan.loc[plan["frames_rule"] != "all", "label"] == 0).all()
    boxes = json.loads(plan.set_index("patient_id").loc["P2"].query("view == 'rcc'")["boxes"].item())
    assert [b["slice"] for b in boxes] == [12, 30] and boxes[0]["x"] == 10
    assert plan.loc[plan["label"] == 0, "boxes"].eq("[]").all()


def test_single_slice_one_image_per_patient(caplog: pytest.LogCaptureFixture) -> None:
    boxes = BOXES.copy()
    # P2's box at slice 30 is the larger lesion; P3's two boxes are equal (the first wins).
    boxes.loc[(boxes["patient_id"] == "P2") & (boxes["slice"] == 30), "width"] = 50
    with caplog.at_level(logging.WARNING, logger="tasks.prepare.slices"):
        plan = select_slices(VOLUMES, boxes, strategy="single-slice", seed=0)
    got = rules(plan)
    assert got["P2/S2/rcc"] == "frames:30"  # the boxed slice of the largest lesion only
    assert got["P3/S3/lcc"] == "frames:1"
    assert "P6/S7/rcc" not in got  # a positive without a box cannot be used
    assert any("P6/S7/rcc" in r.getMessage() for r in caplog.records)
    normals = plan.loc[plan["label"] == 0]
    assert (normals["frames_rule"] == "pick:1").all()
    # One row per normal patient; P2 has a cancer volume, so is not a normal patient.
    assert sorted(normals["patient_id"]) == ["P1", "P4"]
    assert plan["patient_id"].is_unique
    # Exactly one image per patient.
    n_frames = sum(len(plan_row_frames(row, 60, seed=0)) for _, row in plan.iterrows())
    assert n_frames == plan["patient_id"].nunique() == 4


def test_single_slice_largest_lesion_across_volumes() -> None:
    volumes = volume_table([("P7", "S8", "lcc", "cancer", None), ("P7", "S8", "rcc", "benign", None)])
    boxes = box_table([("P7", "S8", "lcc", 5, 60), ("P7", "S8", "rcc", 9, 60)])
    boxes.loc[boxes["view"] == "rcc", "height"] = 90
    plan = select_slices(volumes, boxes, strategy="single-slice", seed=0)
    assert rules(plan) == {"P7/S8/rcc": "frames:9"}


def test_pick_rule_is_one_seeded_frame() -> None:
    picked = {tuple(resolve_frames("pick:1", 40, seed=s, key="P1/S1/lcc")) for s in range(8)}
    assert all(len(p) == 1 and 0 <= p[0] < 40 for p in picked)
    assert len(picked) > 1  # the seed moves it
    assert resolve_frames("pick:1", 40, seed=3, key="k") == resolve_frames("pick:1", 40, seed=3, key="k")
    with pytest.raises(ValueError, match="pick"):
        resolve_frames("pick:0", 40, seed=0, key="k")


def test_single_slice_view_choice_depends_on_seed_only() -> None:
    chosen = set()
    for seed in range(12):
        plan = select_slices(VOLUMES, BOXES, strategy="single-slice", seed=seed)
        shuffled = select_slices(VOLUMES.sample(frac=1, random_state=seed), BOXES, strategy="single-slice", seed=seed)
        pd.testing.assert_frame_equal(plan, shuffled)
        p1 = plan.loc[plan["patient_id"] == "P1"]
        assert len(p1) == 1
        chosen.add(p1["view"].item())
    assert len(chosen) > 1  # the seed does pick among the patient's normal views


def test_lesion_slices_window_clipped_to_the_volume() -> None:
    plan = select_slices(VOLUMES, BOXES, strategy="lesion-slices", lesion_window=2)
    got = rules(plan)
    assert got["P2/S2/rcc"] == "frames:10,11,12,13,14,28,29,30,31,32"
    assert got["P3/S3/lcc"] == "frames:0,1,2,3,47,48,49"  # clipped at 0 and VolumeSlices - 1 = 49
    assert got["P1/S1/lcc"] == "fraction:0.15"
    assert "P6/S7/rcc" not in got
    assert resolve_frames(got["P3/S3/lcc"], 50, seed=0, key="P3/S3/lcc")[-1] == 49


def test_select_slices_validates_arguments() -> None:
    with pytest.raises(ValueError, match="strategy"):
        select_slices(VOLUMES, BOXES, strategy="every-slice")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="normal_fraction"):
        select_slices(VOLUMES, BOXES, strategy="all-slices", normal_fraction=0)
    with pytest.raises(ValueError, match="lesion_window"):
        select_slices(VOLUMES, BOXES, strategy="lesion-slices", lesion_window=-1)


def test_plan_is_deterministic_and_order_free() -> None:
    a = select_slices(VOLUMES, BOXES, strategy="all-slices", seed=5)
    b = select_slices(VOLUMES.iloc[::-1], BOXES.iloc[::-1], strategy="all-slices", seed=5)
    pd.testing.assert_frame_equal(a, b)
    frames_a = [plan_row_frames(r, 70, seed=5) for _, r in a.iterrows()]
    frames_b = [resolve_frames(r.frames_rule, 70, seed=5, key=volume_key(r.patient_id, r.study_uid, r.view))
                for r in b.iloc[::-1].itertuples()][::-1]
    assert frames_a == frames_b


def test_lesion_window_without_volume_slices_is_clipped_at_extraction() -> None:
    boxes = BOXES.copy()
    boxes["volume_slices"] = pd.array([pd.NA] * len(boxes), dtype="Int64")
    plan = select_slices(VOLUMES, boxes, strategy="lesion-slices", lesion_window=2)
    rule = rules(plan)["P3/S3/lcc"]
    assert rule.startswith("lesion:2:")
    assert resolve_frames(rule, 50, seed=0, key="P3/S3/lcc") == [0, 1, 2, 3, 47, 48, 49]
    assert resolve_frames(rule, 60, seed=0, key="P3/S3/lcc") == [0, 1, 2, 3, 47, 48, 49, 50, 51]
    with pytest.raises(ValueError, match="out of range"):
        resolve_frames(rule, 40, seed=0, key="P3/S3/lcc")


@pytest.mark.parametrize("text", ["all", "middle", "frames:12", "frames:10,11,12,13,14", "lesion:2:12,12,30",
                                  "pick:1", "fraction:0.15", "fraction:1.0"])
def test_frame_rule_text_round_trips(text: str) -> None:
    # The plan stores str(rule) in frames_rule: the text must come back unchanged.
    rule = FrameRule.parse(text)
    assert str(rule) == text
    assert FrameRule.parse(str(rule)) == rule


def test_frame_rule_constructors_spell_the_plan_texts() -> None:
    assert str(FrameRule.exact([30, 12, 12])) == "frames:12,30"
    assert str(FrameRule.lesion(2, [12, 12, 30])) == "lesion:2:12,12,30"
    assert str(FrameRule.share(0.15)) == "fraction:0.15"
    assert str(FrameRule.pick(1)) == "pick:1"
    assert FrameRule.lesion(1, [3]).frames_in(5, seed=0, key="k") == [2, 3, 4]


def test_frame_rule_parse_errors_name_the_volume() -> None:
    with pytest.raises(ValueError, match="volume P/S/lcc: rule 'frames:a'"):
        FrameRule.parse("frames:a", key="P/S/lcc")
    with pytest.raises(ValueError, match="unknown frame rule 'every'"):
        FrameRule.parse("every")
