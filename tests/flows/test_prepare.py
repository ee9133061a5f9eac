"""The prepare-data flow end to end on a generated dataset, under a Prefect test harness; and never
silently wrong: reused folders, partial labels, boxes off the frame, locks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tasks.core.config import DataConfig, PrepareConfig, SlicesConfig


def _config(data: Path, out: Path, **slices) -> PrepareConfig:
    return PrepareConfig(
        data=DataConfig(data_root=str(data), output_dir=str(out)),
        slices=SlicesConfig(**{"image_size": 64, "workers": 2, "shard_size": 4, **slices}),
    )


@pytest.fixture(scope="module")
def damaged_dataset(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The small dataset with one truncated and one deleted normal volume."""
    root = tmp_path_factory.mktemp("damaged") / "data"
    shutil.copytree(small_dataset, root)
    files = sorted(root.rglob("*.dcm"))
    truncated, deleted = files[0], files[-1]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    deleted.unlink()
    return root, {"truncated": truncated, "deleted": deleted}


def _patient_of(path: Path) -> str:
    return next(p for p in path.parts if p.startswith("DBT-P"))


def test_prepare_flow_manifest_rejects_and_cached_rerun(prefect_harness, damaged_dataset, tmp_path) -> None:
    from flows.prepare import prepare_data

    data, damage = damaged_dataset
    out = tmp_path / "prepared"
    result = prepare_data(config=_config(data, out, strategy="all-slices"))

    manifest = pd.read_parquet(result["manifest"])
    required = {"patient_id", "study_uid", "view", "slice_index", "label", "cohort", "split", "image_path",
                "source_path", "window_center", "window_width", "rotated", "scale", "pad_x", "pad_y",
                "box_x", "box_y", "box_width", "box_height"}
    assert required <= set(manifest.columns)
    assert set(manifest["label"]) == {0, 1}
    assert set(manifest["cohort"]) <= {"normal", "benign", "cancer"}
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
    for rel in manifest["image_path"].head(20):
        assert (out / rel).is_file()
    # Every positive volume contributes all its frames; the boxed frame carries the box.
    boxed = manifest[manifest["box_x"].notna()]
    assert len(boxed) > 0 and (boxed["label"] == 1).all()
    assert (boxed["box_x"] >= 0).all() and (boxed["box_x"] + boxed["box_width"] <= 64 + 1e-6).all()

    rejects = pd.read_parquet(result["rejects"])
    rejected = set(rejects.loc[rejects["kind"] == "volume", "patient_id"])
    assert _patient_of(damage["truncated"]) in rejected or _patient_of(damage["deleted"]) in rejected
    assert rejects["reason"].str.len().gt(0).all()

    summary = json.loads(Path(result["summary"]).read_text())
    assert summary["audit"]["overlap_patients"] == 0
    assert summary["images"] == len(manifest)

    pngs = sorted(out.rglob("*.png"))
    before = {p: p.stat().st_mtime_ns for p in pngs}
    manifest_bytes = Path(result["manifest"]).read_bytes()

    again = prepare_data(config=_config(data, out, strategy="all-slices"))
    assert Path(again["manifest"]).read_bytes() == manifest_bytes
    assert {p: p.stat().st_mtime_ns for p in sorted(out.rglob("*.png"))} == before


def test_prepare_single_slice_and_image_size_change(prefect_harness, small_dataset, tmp_path) -> None:
    from flows.prepare import prepare_data

    out = tmp_path / "single"
    result = prepare_data(config=_config(small_dataset, out, strategy="single-slice", executor="serial"))
    manifest = pd.read_parquet(result["manifest"])
    assert manifest.groupby("patient_id").size().eq(1).all()  # method 2: one image per patient
    positives = manifest[manifest["label"] == 1]
    assert positives["box_x"].notna().all()
    first = (out / manifest["image_path"].iloc[0]).stat().st_mtime_ns

    # A cached step whose output file was deleted is recomputed, not trusted.
    Path(result["manifest"]).unlink()
    again = prepare_data(config=_config(small_dataset, out, strategy="single-slice", executor="serial"))
    assert pd.read_parquet(again["manifest"]).equals(manifest)

    bigger = prepare_data(config=_config(small_dataset, out, strategy="single-slice", executor="serial",
                                         image_size=96))
    manifest96 = pd.read_parquet(bigger["manifest"])
    from PIL import Image

    with Image.open(out / manifest96["image_path"].iloc[0]) as im:
        assert im.size == (96, 96)
    assert (out / manifest96["image_path"].iloc[0]).stat().st_mtime_ns != first


def _serial_config(data: Path, out: Path, *, max_reject_fraction: float | None = None, **slices) -> PrepareConfig:
    extra = {} if max_reject_fraction is None else {"max_reject_fraction": max_reject_fraction}
    return PrepareConfig(
        data=DataConfig(data_root=str(data), output_dir=str(out), **extra),
        slices=SlicesConfig(**{"image_size": 32, "executor": "serial", "shard_size": 64, **slices}),
    )


def _outputs(out: Path) -> tuple[bytes, bytes, dict]:
    summary = json.loads((out / "cohort_summary.json").read_text())
    return ((out / "manifest.parquet").read_bytes(), (out / "rejects.parquet").read_bytes(), summary)


@pytest.mark.parametrize(("first", "second"), [
    ({"strategy": "all-slices"}, {"strategy": "single-slice"}),
    ({"seed": 0}, {"seed": 1}),
])
def test_reused_output_folder_matches_fresh_runs(prefect_harness, small_dataset, tmp_path, first, second) -> None:
    """A -> B -> A into one folder gives, each time, what a fresh folder gives."""
    from flows.prepare import prepare_data

    shared = tmp_path / "shared"
    prepare_data(config=_serial_config(small_dataset, shared, **first))
    first_outputs = _outputs(shared)
    prepare_data(config=_serial_config(small_dataset, shared, **second))
    second_outputs = _outputs(shared)
    prepare_data(config=_serial_config(small_dataset, tmp_path / "fresh", **second))
    assert second_outputs == _outputs(tmp_path / "fresh")
    assert first_outputs[0] != second_outputs[0]

    prepare_data(config=_serial_config(small_dataset, shared, **first))
    again = _outputs(shared)
    assert again == first_outputs
    manifest = pd.read_parquet(shared / "manifest.parquet")
    assert again[2]["images"] == len(manifest)
    for key, value in first.items():
        assert again[2][key] == value
    for rel in manifest["image_path"]:
        assert (shared / rel).is_file()


@pytest.fixture
def header_only_labels(small_dataset: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(small_dataset, root)
    # The validation and test labels CSVs hold only their header: their volumes (about 30 % of
    # those listed) lose their labels. The training CSV keeps its labels, so that once the loss
    # is accepted the data can still give both classes to every split.
    for labels in [*root.glob("BCS-DBT*labels-validation*.csv"), *root.glob("BCS-DBT*labels-test*.csv")]:
        labels.write_text(labels.read_text().splitlines()[0] + "\n")
    return root


def test_header_only_labels_csv_stops_with_counts_then_accepted_by_option(
        prefect_harness, header_only_labels, tmp_path) -> None:
    from flows.prepare import prepare_data

    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"no-label: \d+.*--max-reject-fraction"):
        prepare_data(config=_serial_config(header_only_labels, out))
    assert not (out / "manifest.parquet").exists()
    assert not list((out / "slices").rglob("*.png")) if (out / "slices").exists() else True
    rejects = pd.read_parquet(out / "rejects.parquet")
    summary = json.loads((out / "cohort_summary.json").read_text())
    accounting = summary["accounting"]
    assert accounting["rejected_by_reason"]["no-label"] == int((rejects["reason"] == "no-label").sum()) > 0
    assert "failed" in summary

    result = prepare_data(config=_serial_config(header_only_labels, out, max_reject_fraction=1.0))
    manifest = pd.read_parquet(result["manifest"])
    rejects = pd.read_parquet(result["rejects"])
    accounting = json.loads(Path(result["summary"]).read_text())["accounting"]
    listed = pd.concat([pd.read_csv(p) for p in header_only_labels.glob("BCS-DBT*file-paths*.csv")])
    assert accounting["listed"] == len(listed)
    assert accounting["reconciled"] and accounting["listed"] == accounting["used"] + accounting["rejected"]
    used = set(manifest[["patient_id", "study_uid", "view"]].itertuples(index=False, name=None))
    rejected = set(rejects.loc[rejects["kind"] == "volume", ["patient_id", "study_uid", "view"]]
                   .itertuples(index=False, name=None))
    every = set(listed[["PatientID", "StudyUID", "View"]].itertuples(index=False, name=None))
    assert used | rejected == every and not used & rejected


def test_box_outside_the_frame_is_rejected_naming_the_row(prefect_harness, small_dataset, tmp_path) -> None:
    from flows.prepare import prepare_data

    root = tmp_path / "data"
    shutil.copytree(small_dataset, root)
    boxes_csv = next(root.glob("BCS-DBT*boxes-train*.csv"))
    boxes = pd.read_csv(boxes_csv)
    boxes.loc[0, "X"] = 5000
    boxes.to_csv(boxes_csv, index=False)
    bad = boxes.iloc[0]

    result = prepare_data(config=_serial_config(root, tmp_path / "out", strategy="all-slices"))
    rejects = pd.read_parquet(result["rejects"])
    box_rejects = rejects[rejects["kind"] == "box"]
    assert len(box_rejects) == 1
    reason = box_rejects["reason"].iloc[0]
    assert f"{boxes_csv.name} line 2" in reason and "X=5000" in reason
    manifest = pd.read_parquet(result["manifest"])
    volume = manifest[(manifest["patient_id"] == bad["PatientID"]) & (manifest["view"] == bad["View"])]
    assert len(volume) > 0 and (volume["label"] == 1).all()  # the volume stays; only the box goes
    boxed = manifest[manifest["box_x"].notna()]
    assert (boxed["box_x"] + boxed["box_width"] <= 32 + 1e-6).all()
    assert json.loads(Path(result["summary"]).read_text())["boxes_outside_frame"] == 1


def test_a_run_into_a_locked_folder_stops_at_once_naming_the_other(prefect_harness, small_dataset,
                                                                  tmp_path) -> None:
    import subprocess
    import sys

    from flows.prepare import prepare_data
    from tasks.core.files import OutputInUseError

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom tasks.core.files import output_lock\n"
         "with output_lock(sys.argv[1], what='prepare single-slice 224px'):\n"
         "    print('held', flush=True)\n    time.sleep(600)\n", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputInUseError, match=rf"pid {holder.pid}.*prepare single-slice 224px"):
            prepare_data(config=_serial_config(small_dataset, out))
        assert not (out / "slices").exists() and not (out / ".work").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
