"""`tomoflow prepare` as a user runs it on unusual collections: one kept on a mount, one image under two
patient ids, a blank volume (each run starts a temporary Prefect server)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.flows.cli_env import REPO
from tests.flows.cli_env import cli_env as _env

COLLECTION = "Breast-Cancer-Screening-DBT"


def _prepare(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "prepare", "--data-root", str(data), "--out", str(out),
            "--image-size", "32", "--workers", "1", "--strategy", "single-slice", *extra]


def _run(cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("prepare-cli-collections") / "data"
    generate_dataset(root, patients=12, seed=5, rows=64, columns=48, frames=(6, 10), positive_fraction=0.4)
    return root


def _file_paths(data: Path) -> Path:
    return next(data.glob("BCS-DBT*file-paths-train*.csv"))


def _codes(out: Path) -> pd.Series:
    return pd.read_parquet(out / "rejects.parquet")["reason"].str.split(":").str[0]


def _on_a_mount(dataset: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The CSVs in a data root, the collection on a 'mount' reached by a symlink inside it."""
    data, mount = tmp_path / "data", tmp_path / "mnt" / "dbt"
    shutil.copytree(dataset, data, ignore=shutil.ignore_patterns(COLLECTION))
    mount.mkdir(parents=True)
    shutil.copytree(dataset / COLLECTION, mount / COLLECTION)
    (data / COLLECTION).symlink_to(mount / COLLECTION)
    return data, mount


def test_collection_on_a_mount_is_read_and_absolute_paths_need_extra_data_root(dataset: Path, tmp_path: Path) -> None:
    """A symlinked collection prepares; CSV paths pointing into the mount stop naming the path,
    the root and both ways out, and --extra-data-root admits them."""
    data, mount = _on_a_mount(dataset, tmp_path)
    out = tmp_path / "out"
    result = _run(_prepare(data, out), tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "outside-data-root" not in set(_codes(out))
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) and manifest["source_path"].str.startswith(f"{COLLECTION}/").all()

    # CSVs whose absolute paths point into the mount, no symlink in the root.
    (data / COLLECTION).unlink()
    for csv in data.glob("BCS-DBT*file-paths*.csv"):
        table = pd.read_csv(csv, dtype=str)
        table["descriptive_path"] = [str(mount / p) for p in table["descriptive_path"]]
        table["classic_path"] = [str(mount / p) for p in table["classic_path"]]
        table.to_csv(csv, index=False)
    out2 = tmp_path / "out2"
    refused = _run(_prepare(data, out2), tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    assert "outside-data-root" in refused.stderr and str(mount) in refused.stderr and str(data) in refused.stderr
    assert "--extra-data-root DIR" in refused.stderr and "symlink" in refused.stderr
    assert "accept this with --max-reject-fraction" not in refused.stderr

    out3 = tmp_path / "out3"
    admitted = _run(_prepare(data, out3, "--extra-data-root", str(mount)), tmp_path)
    assert admitted.returncode == 0, admitted.stderr[-2000:]
    assert "outside-data-root" not in set(_codes(out3))
    assert len(pd.read_parquet(out3 / "manifest.parquet")) == len(manifest)


def test_one_image_under_two_patients_is_rejected_as_duplicate_content(dataset: Path, tmp_path: Path) -> None:
    """A normal patient's DICOM copied over a cancer patient's: both rejected, neither trains."""
    from tasks.prepare.locate import VolumeResolver

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    table = pd.read_csv(_file_paths(data), dtype=str)
    labels = pd.concat([pd.read_csv(p, dtype=str) for p in data.glob("BCS-DBT*labels*.csv")])
    label_of = {(r.PatientID, r.StudyUID, r.View): r for r in labels.itertuples()}
    resolver = VolumeResolver(data)
    # Volumes the strategy extracts (a volume it never selects is never hashed): from a clean run.
    clean = _run(_prepare(data, tmp_path / "clean"), tmp_path)
    assert clean.returncode == 0, clean.stderr[-2000:]
    extracted = {(r.patient_id, r.study_uid, str(r.view).lower())
                 for r in pd.read_parquet(tmp_path / "clean" / "manifest.parquet").itertuples()}

    def pick(flag: str) -> pd.Series:
        return next(r for _, r in table.iterrows()
                    if (r.PatientID, r.StudyUID, str(r.View).lower()) in extracted
                    and getattr(label_of.get((r.PatientID, r.StudyUID, r.View)), flag, "0") == "1")

    normal, cancer = pick("Normal"), pick("Cancer")
    paths = [resolver.resolve(r["descriptive_path"], r["classic_path"], r["PatientID"])[0] for r in (normal, cancer)]
    shutil.copyfile(paths[0], paths[1])
    out = tmp_path / "out"
    result = _run(_prepare(data, out, "--max-reject-fraction", "1"), tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rejects = pd.read_parquet(out / "rejects.parquet")
    duplicated = rejects[rejects["reason"].str.startswith("duplicate-content")]
    assert set(duplicated["patient_id"]) == {normal["PatientID"], cancer["PatientID"]}
    assert normal["PatientID"] in duplicated["reason"].iloc[0] and cancer["PatientID"] in duplicated["reason"].iloc[0]
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert manifest["source_sha256"].notna().all()
    assert manifest.groupby("source_sha256")["patient_id"].nunique().max() == 1
    accounting = json.loads((out / "cohort_summary.json").read_text())["accounting"]
    assert accounting["rejected_by_reason"]["duplicate-content"] == 2 and accounting["faults"] >= 2


def test_blank_volume_is_rejected_not_used_as_normal(dataset: Path, tmp_path: Path) -> None:
    """A volume whose pixel data are all zero is rejected as blank-frames and counted as a fault."""
    import pydicom

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    table = pd.read_csv(_file_paths(data), dtype=str)
    from tasks.prepare.locate import VolumeResolver

    labels = pd.concat([pd.read_csv(p, dtype=str) for p in data.glob("BCS-DBT*labels*.csv")])
    normal = set(zip(*(labels.loc[labels["Normal"] == "1", c] for c in ("PatientID", "StudyUID", "View"))))
    first = next(r for _, r in table.iterrows() if (r["PatientID"], r["StudyUID"], r["View"]) in normal)
    path = VolumeResolver(data).resolve(first["descriptive_path"], first["classic_path"], first["PatientID"])[0]
    ds = pydicom.dcmread(path)
    zeros = np.zeros((int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)), dtype=np.uint16)
    ds.set_pixel_data(zeros, photometric_interpretation="MONOCHROME2", bits_stored=int(ds.BitsStored))
    ds.save_as(path)
    out = tmp_path / "out"
    result = _run(_prepare(data, out, "--strategy", "all-slices", "--max-reject-fraction", "1"), tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rejects = pd.read_parquet(out / "rejects.parquet")
    blank = rejects[rejects["reason"].str.startswith("blank-frames")]
    assert list(blank["patient_id"]) == [first["PatientID"]] and list(blank["view"]) == [first["View"]]
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert not ((manifest["patient_id"] == first["PatientID"]) & (manifest["view"] == first["View"])).any()
    assert json.loads((out / "cohort_summary.json").read_text())["accounting"]["rejected_by_reason"]["blank-frames"] == 1
