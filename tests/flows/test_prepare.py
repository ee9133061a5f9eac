"""The prepare-data flow end to end on a generated dataset, under a Prefect test harness."""

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
