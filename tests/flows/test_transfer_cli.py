"""Transfer and generalisation at the command line: an earlier tomoflow run as weights, the
evaluate-time audit against the model's training data, and evaluation on another collection."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from flows.cli import main
from tests.flows.artifacts import artifacts_with_keys

TINY_TRAIN = ["--model", "vgg16", "--epochs", "1", "--batch-size", "8", "--image-size", "32", "--max-batches", "2",
              "--num-workers", "0", "--device", "cpu", "--no-augment"]
FAST_EVAL = ["--bootstrap", "20", "--device", "cpu"]


def _prepare(data: Path, out: Path, *extra: str) -> Path:
    assert main(["prepare", "--data-root", str(data), "--out", str(out), "--image-size", "40", "--workers", "1",
                 "--executor", "serial", *extra]) == 0
    return out / "manifest.parquet"


def _train(manifest: Path, out: Path, *extra: str) -> int:
    return main(["train", "--manifest", str(manifest), "--out", str(out), "--weights", "none", *TINY_TRAIN, *extra])


@pytest.fixture(scope="module")
def collection_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, smaller synthetic collection (other seed: other patients and images)."""
    from synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("collection-b")
    generate_dataset(root, patients=14, seed=11, rows=64, columns=48, frames=(6, 8), positive_fraction=0.4)
    return root


@pytest.fixture(scope="module")
def run_a(prefect_harness, small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained and evaluated on collection A."""
    root = tmp_path_factory.mktemp("run-a")
    manifest = _prepare(small_dataset, root / "prepared")
    assert _train(manifest, root / "run") == 0
    assert main(["evaluate", "--run", str(root / "run"), *FAST_EVAL]) == 0
    return root / "run"


def test_evaluate_stops_when_reprepared_splits_hold_training_patients(prefect_harness, small_dataset: Path,
                                                                      tmp_path: Path, capsys) -> None:
    # Prepare with another seed rewrites the splits under the same manifest path.
    manifest = _prepare(small_dataset, tmp_path / "prepared")
    assert _train(manifest, tmp_path / "run") == 0
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    trained = set(pd.read_parquet(manifest).query("split in ['train', 'validation']")["patient_id"])
    assert len(ckpt["training_data"]["splits"]["train"]["patients"]) > 0
    assert not set(ckpt["training_data"]["splits"]["train"]["patients"]) & trained  # digests, not the ids

    _prepare(small_dataset, tmp_path / "prepared", "--seed", "1")
    test_now = set(pd.read_parquet(manifest).query("split == 'test'")["patient_id"])
    leaked = len(test_now & trained)
    assert leaked > 0, "the reseeded test split should hold patients the model trained on"
    capsys.readouterr()
    assert main(["evaluate", "--run", str(tmp_path / "run"), *FAST_EVAL]) == 2
    err = capsys.readouterr().err
    assert f"holds {leaked} of its {len(test_now)} patients" in err and "--allow-overlap" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "metrics.json").exists()

    assert main(["evaluate", "--run", str(tmp_path / "run"), "--allow-overlap", *FAST_EVAL]) == 0
    audit = json.loads((tmp_path / "run" / "training_audit.json").read_text())
    assert audit["overlap_patients"] == leaked and audit["allowed"]
    html = (tmp_path / "run" / "report.html").read_text()
    assert "seen in training or validation (evaluated with --allow-overlap)" in html
    for patient in trained:  # the report names counts, never the ids it audited
        assert patient not in audit.get("message", "")


def test_fine_tune_from_an_earlier_tomoflow_run(prefect_harness, run_a: Path, collection_b: Path,
                                                tmp_path: Path, capsys) -> None:
    from models.training.checkpoint import load_classifier
    from models.nets.classifier import build_model

    manifest_b = _prepare(collection_b, tmp_path / "prepared-b", "--strategy", "all-slices")
    assert _train(manifest_b, tmp_path / "run-b", "--weights", str(run_a)) == 0
    # The fine-tuned run records its source: run, checkpoint hash, training data, own test figures.
    for name in ("best.pt", "last.pt"):
        source = torch.load(tmp_path / "run-b" / name, weights_only=True)["weights_source"]
        assert source["kind"] == "tomoflow" and source["run"] == str(run_a) and source["transfer"] == "all"
        assert source["sha256"] == hashlib.sha256((run_a / "best.pt").read_bytes()).hexdigest()
        a_ckpt = torch.load(run_a / "best.pt", weights_only=True)
        assert source["training_data_fingerprint"] == a_ckpt["training_data"]["manifest_fingerprint"]
        own = json.loads((run_a / "metrics.json").read_text())["levels"]["slice"]["metrics"]["roc_auc"]
        assert source["test_figures"]["metrics"]["roc_auc"] == own

    # The weights were loaded: before any step, the model train builds answers as the source model does.
    x = torch.rand(4, 1, 32, 32)
    source_model = load_classifier(run_a / "best.pt")
    started = build_model(model="vgg16", weights=str(run_a), image_size=32, seed=123).eval()
    scratch = build_model(model="vgg16", weights=None, image_size=32, seed=123).eval()
    backbone_only = build_model(model="vgg16", weights=str(run_a / "best.pt"), transfer="backbone", image_size=32,
                                seed=123).eval()
    with torch.no_grad():
        assert torch.equal(started(x), source_model(x))
        assert not torch.allclose(scratch(x), source_model(x))
        assert not torch.allclose(backbone_only(x), source_model(x))  # a fresh head
    for key, value in source_model.backbone.state_dict().items():
        assert torch.equal(backbone_only.backbone.state_dict()[key], value), key

    # The report and the dashboard say where the model started.
    notes = [a.data for a in artifacts_with_keys("starting-point")]
    assert any(str(run_a) in (n or "") and "earlier tomoflow model" in (n or "") for n in notes)
    assert main(["evaluate", "--run", str(tmp_path / "run-b"), *FAST_EVAL]) == 0
    html = (tmp_path / "run-b" / "report.html").read_text()
    assert "Started from an earlier tomoflow model" in html and str(run_a) in html

    # Another backbone cannot start from it: one line naming both.
    capsys.readouterr()
    assert _train(manifest_b, tmp_path / "run-c", "--weights", str(run_a), "--model", "vgg16_bn") == 2
    err = capsys.readouterr().err
    assert "hold a vgg16 model; this run builds vgg16_bn" in err and "Traceback" not in err


def test_external_evaluation_reports_gap_or_overlap(prefect_harness, run_a: Path, collection_b: Path,
                                                    tmp_path: Path, capsys) -> None:
    # A disjoint collection: the gap to the model's own test figures, with an interval.
    assert main(["evaluate", "--run", str(run_a), "--external", str(collection_b), "--out", str(tmp_path / "ext"),
                 *FAST_EVAL]) == 0
    comparison = json.loads((tmp_path / "ext" / "external.json").read_text())
    own = json.loads((run_a / "metrics.json").read_text())["levels"]["slice"]["metrics"]
    assert comparison["own_test"]["figures"]["accuracy"] == pytest.approx(own["accuracy"])
    assert comparison["external"]["patients"] > 0
    gap = comparison["gap"]
    low, high = gap["intervals"]["accuracy"]
    assert low <= gap["difference"]["accuracy"] <= high
    audit = json.loads((tmp_path / "ext" / "training_audit.json").read_text())
    assert audit["checked"] and audit["overlap_rows"] == 0
    pred = pd.read_parquet(tmp_path / "ext" / "predictions.parquet")
    assert set(pred["split"]) == {"train", "validation", "test"}  # all rows of the other collection
    assert "External evaluation" in (tmp_path / "ext" / "report.html").read_text()
    # The gap is read beside the trivial brightness score on the external images.
    trivial = comparison["trivial"]
    assert trivial["chosen_on"] == "validation split of the training collection"
    assert 0 <= trivial["roc_auc"] <= 1 and trivial["model_roc_auc"] == pytest.approx(
        comparison["external"]["figures"]["roc_auc"])
    assert trivial["model_minus_trivial"] == pytest.approx(trivial["model_roc_auc"] - trivial["roc_auc"])
    assert f"reaches AUC {trivial['roc_auc']:.3f}" in (tmp_path / "ext" / "report.html").read_text()
    keys = {a.key for a in artifacts_with_keys("external-evaluation", "training-audit")}
    assert {"external-evaluation", "training-audit"} <= keys

    # A collection holding the model's training patients under other names: found by pixels.
    own_manifest = pd.read_parquet(run_a.parent / "prepared" / "manifest.parquet")
    renamed = own_manifest.assign(patient_id="X-" + own_manifest["patient_id"].str[-3:],
                                  study_uid="S-" + own_manifest["study_uid"].str[-3:])
    copy = run_a.parent / "prepared" / "renamed.parquet"
    renamed.to_parquet(copy)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run_a), "--external", str(copy), "--out", str(tmp_path / "renamed"),
                 *FAST_EVAL]) == 2
    err = capsys.readouterr().err
    assert "by id 0 patients" in err and "by pixels" in err and "--allow-overlap" in err
    assert main(["evaluate", "--run", str(run_a), "--external", str(copy), "--out", str(tmp_path / "renamed"),
                 "--allow-overlap", *FAST_EVAL]) == 0
    audit = json.loads((tmp_path / "renamed" / "training_audit.json").read_text())
    assert audit["overlap_patients"] == 0 and audit["overlap_images"] > 0
    shutil.rmtree(tmp_path / "renamed")
