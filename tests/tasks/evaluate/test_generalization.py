"""Differences with patient-bootstrap intervals, and the audit of evaluated rows against a model's training data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from models.inference.provenance import audit_overlap, hash_id, overlap_message, training_data_record
from tasks.evaluate.paired_bootstrap import gap_interval, paired_difference


def _pred(n_patients: int, *, skill: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = p % 2
        for k in range(3):
            score = np.clip(0.5 + skill * (label - 0.5) + rng.normal(0, 0.2), 0, 1)
            rows.append({"patient_id": f"P{p:03d}", "study_uid": f"S{p:03d}", "view": "rcc", "slice_index": k,
                         "label": label, "probability": float(score)})
    return pd.DataFrame(rows)


def test_paired_difference_finds_a_better_model_and_none_between_equals() -> None:
    weak, strong = _pred(30, skill=0.1, seed=0), _pred(30, skill=0.8, seed=0)
    diff = paired_difference(weak, strong, n=300, seed=1)
    low, high = diff["intervals"]["roc_auc"]
    assert 0 < low <= diff["difference"]["roc_auc"] <= high
    same = paired_difference(weak, weak, n=100, seed=1)
    assert same["difference"]["roc_auc"] == 0 and same["intervals"]["roc_auc"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="different images"):
        paired_difference(weak, strong.iloc[:-3], n=10)


def test_figures_agree_with_binary_metrics() -> None:
    from tasks.evaluate.metrics_point import binary_metrics
    from tasks.evaluate.paired_bootstrap import FIGURES, _figures

    pred = _pred(12, skill=0.5, seed=4)
    reference = binary_metrics(pred["label"], pred["probability"], 0.5)
    assert _figures(pred, 0.5) == pytest.approx({k: reference[k] for k in FIGURES})


def test_gap_interval_is_other_minus_own_and_covers_it() -> None:
    own, other = _pred(30, skill=0.8, seed=2), _pred(20, skill=0.2, seed=3)
    gap = gap_interval(own, other, n=300, seed=0)
    assert gap["difference"]["roc_auc"] == pytest.approx(gap["other"]["roc_auc"] - gap["own"]["roc_auc"])
    low, high = gap["intervals"]["roc_auc"]
    assert low <= gap["difference"]["roc_auc"] <= high < 0


def test_audit_finds_training_patients_by_id_and_renamed_copies_by_pixels(tmp_path: Path) -> None:
    rows = []
    for i, split in enumerate(["train", "train", "validation", "test"]):
        path = f"img{i}.png"
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / path)
        rows.append({"patient_id": f"DBT-P{i:05d}", "study_uid": f"DBT-S{i:05d}", "split": split, "image_path": path,
                     "label": i % 2})
    frame = pd.DataFrame(rows)
    record = training_data_record(frame, root=tmp_path, fingerprint="abc")
    assert record["splits"]["train"]["patients"] == sorted(hash_id(p) for p in ("DBT-P00000", "DBT-P00001"))
    assert "DBT-P00000" not in repr(record)

    clean = audit_overlap(record, frame[frame["split"] == "test"], root=tmp_path)
    assert clean["checked"] and clean["overlap_rows"] == 0 and overlap_message(clean, what="x") is None

    renamed = frame.assign(patient_id=["X1", "X2", "X3", "X4"], study_uid=["Y1", "Y2", "Y3", "Y4"])
    audit = audit_overlap(record, renamed, root=tmp_path)
    assert audit["overlap_patients"] == 0 and audit["overlap_studies"] == 0
    assert audit["overlap_images"] == 3 and audit["overlap_patients_any"] == 3
    assert audit["by_split"]["validation"]["images"] == 1
    message = overlap_message(audit, what="the rows")
    assert "holds 3 of its 4 patients" in message and "--allow-overlap" in message and "X1" not in message

    assert not audit_overlap(None, frame, root=tmp_path)["checked"]


def test_renamed_copy_at_another_image_size_is_found_by_source_hash_and_claims_no_pixel_check(tmp_path: Path) -> None:
    """The training collection renamed and re-prepared at 128 px (trained at 96 px)
    with other frames chosen: no pixel can match, the source DICOM's hash does; the audit says which
    keys it compared and never claims a pixel check."""
    rows, copies = [], []
    for i, split in enumerate(["train", "train", "validation", "test"]):
        Image.fromarray(np.full((96, 96), 40 * i, np.uint8)).save(tmp_path / f"a{i}.png")
        Image.fromarray(np.full((128, 128), 40 * i + 1, np.uint8)).save(tmp_path / f"b{i}.png")
        sha = f"{i:x}" * 64
        rows.append({"patient_id": f"DBT-P{i:05d}", "study_uid": f"DBT-S{i:05d}", "split": split,
                     "image_path": f"a{i}.png", "label": i % 2, "source_sha256": sha})
        copies.append({"patient_id": f"X{i}", "study_uid": f"Y{i}", "split": "test", "image_path": f"b{i}.png",
                       "label": i % 2, "source_sha256": sha})
    record = training_data_record(pd.DataFrame(rows), root=tmp_path, fingerprint="abc")
    audit = audit_overlap(record, pd.DataFrame(copies), root=tmp_path)
    assert audit["pixels_checked"] is False and "image pixels" not in audit["keys_compared"]
    assert "96x96" in audit["notes"][0] and "128x128" in audit["notes"][0]
    assert audit["sources_checked"] and "source DICOM sha256" in audit["keys_compared"]
    assert audit["overlap_source_volumes"] == 3 and audit["overlap_patients_any"] == 3
    assert "by source DICOM 3 volumes" in overlap_message(audit, what="the rows")
    # The control: other sources at the other size are not flagged.
    other = pd.DataFrame(copies).assign(source_sha256=["9" * 64, "8" * 64, "7" * 64, "6" * 64])
    clean = audit_overlap(record, other, root=tmp_path)
    assert clean["overlap_rows"] == 0 and clean["sources_checked"] and not clean["pixels_checked"]


def test_all_normal_external_collection_reports_specificity_and_scores_with_auc_not_computable() -> None:
    """One class only: specificity and the score distribution, AUC marked not computable."""
    from tasks.evaluate.generalization import external_comparison
    from tasks.evaluate.report_generalization import external

    own = _pred(20, skill=0.8, seed=2)
    normals = _pred(20, skill=0.8, seed=3).assign(label=0)
    result = external_comparison(own, normals, source="screening", threshold=0.5, n=50, ci=0.95, seed=0)
    ext = result["external"]
    assert ext["labels"] == [0] and ext["figures"]["roc_auc"] is None
    assert ext["figures"]["specificity"] == pytest.approx(float((normals["probability"] < 0.5).mean()))
    assert "one class only" in ext["not_computable"]["roc_auc"] and "specificity" in ext["not_computable"]["roc_auc"]
    assert ext["score_distribution"]["q50"] == pytest.approx(float(normals["probability"].median()))
    assert "AUC not computable" in external(result)["verdict"]
    both = external_comparison(own, _pred(20, skill=0.8, seed=3), source="x", threshold=0.5, n=20, ci=0.95, seed=0)
    assert both["external"]["not_computable"] == {} and both["external"]["figures"]["roc_auc"] is not None


def test_external_gap_is_read_beside_the_trivial_score_on_the_external_images(tmp_path: Path) -> None:
    """The score is chosen on the training collection's validation split, reported on the
    external images, paired with the model there, and the report's sentence says whether the model beats it."""
    from tasks.evaluate.generalization import external_trivial
    from tasks.evaluate.report_generalization import external

    def collection(root: Path, n: int, bright: float, splits: list[str]) -> pd.DataFrame:
        rows = []
        for i in range(n):
            label = i % 2
            img = np.full((40, 40), 60, np.uint8)
            if label:
                img[10:16, 10:16] = int(bright)
            (root / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "img" / f"{i}.png")
            rows.append({"patient_id": f"P{i:03d}", "study_uid": f"S{i}", "view": "lcc", "slice_index": 0,
                         "label": label, "split": splits[i % len(splits)], "image_path": f"img/{i}.png"})
        frame = pd.DataFrame(rows)
        frame.to_parquet(root / "manifest.parquet")
        return frame

    collection(tmp_path / "own", 12, 250, ["validation", "validation", "train", "train"])
    ext = collection(tmp_path / "ext", 20, 250, ["test"])
    # A model that ranks the external images worse than brightness does.
    pred = ext.assign(probability=np.where(ext["label"] == 1, 0.6, 0.4))
    pred.loc[0, "probability"] = 0.9  # a normal image ranked first
    trivial = external_trivial(pred, own_manifest=tmp_path / "own" / "manifest.parquet",
                               external_manifest=tmp_path / "ext" / "manifest.parquet", n=200, ci=0.95, seed=0)
    assert trivial is not None and trivial["roc_auc"] == 1.0 and trivial["model_roc_auc"] < 1.0
    assert trivial["beats_trivial"] is False and trivial["model_minus_trivial"] < 0
    figures = {"roc_auc": trivial["model_roc_auc"], "accuracy": 0.9, "sensitivity": 1.0, "specificity": 0.8}
    comparison = {"source": "B", "own_test": {"images": 5, "patients": 5, "figures": figures},
                  "external": {"images": 20, "patients": 20, "figures": figures},
                  "gap": {"difference": {k: 0.0 for k in figures}, "intervals": {k: [-0.1, 0.1] for k in figures},
                          "bootstrap": {"n_resamples": 200}}, "trivial": trivial}
    verdict = external(comparison)["verdict"]
    assert "trivial brightness score" in verdict and "reaches AUC 1.000" in verdict and "does NOT beat it" in verdict
    assert "not computed" in external({**comparison, "trivial": None})["verdict"]
