"""Train's manifest audit sees one DICOM under two patients, and a manifest's image paths must stay
inside its own folder (models/training/manifest_audit.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from models.training.manifest_audit import audit_splits, outside_images


def _frame(**extra: list) -> pd.DataFrame:
    base = {"patient_id": ["P1", "P2", "P3"], "study_uid": ["S1", "S2", "S3"], "split": ["train", "validation", "test"],
            "label": [0, 1, 0], "image_path": ["slices/a.png", "slices/b.png", "slices/c.png"],
            "source_path": ["x/1.dcm", "x/2.dcm", "x/3.dcm"]}
    return pd.DataFrame({**base, **extra})


def test_one_source_under_two_patients_stops_training_naming_both() -> None:
    frame = _frame(source_sha256=["f" * 64, "f" * 64, "e" * 64])
    with pytest.raises(ValueError) as caught:
        audit_splits(frame, "m/manifest.parquet")
    message = str(caught.value)
    assert "P1" in message and "P2" in message and "x/1.dcm" in message and "x/2.dcm" in message
    assert "P3" not in message


def test_distinct_sources_and_old_manifests_pass() -> None:
    """Distinct sources, an older manifest without the column, and one source under one patient twice
    (two slices of the same volume) pass; the same frames with one source moved to another patient stop."""
    assert audit_splits(_frame(source_sha256=["f" * 64, "d" * 64, "e" * 64]), "m/manifest.parquet") is None
    assert audit_splits(_frame(), "m/manifest.parquet") is None  # prepared before the column existed
    same_patient = _frame(source_sha256=["f" * 64, "d" * 64, "e" * 64])
    same_patient = pd.concat([same_patient, same_patient.iloc[[0]]], ignore_index=True)
    assert audit_splits(same_patient, "m/manifest.parquet") is None
    with pytest.raises(ValueError, match="two or more patients"):
        audit_splits(same_patient.assign(source_sha256=["f" * 64, "f" * 64, "e" * 64, "f" * 64]), "m/manifest.parquet")


def test_image_paths_must_stay_in_the_manifests_folder(tmp_path: Path) -> None:
    folder = tmp_path / "prepared"
    (folder / "slices").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "slices" / "ok.png")
    outside = tmp_path / "secret"
    outside.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(outside / "x.png")
    (folder / "link").symlink_to(outside)
    manifest = folder / "manifest.parquet"
    assert outside_images(pd.DataFrame({"image_path": ["slices/ok.png"]}), manifest) is None
    for bad in ["../secret/x.png", str(outside / "x.png"), "link/x.png", "/etc/passwd"]:
        message = outside_images(pd.DataFrame({"image_path": ["slices/ok.png", bad]}), manifest)
        assert message is not None and "row 1" in message and repr(bad) in message and os.path.realpath(folder) in message
