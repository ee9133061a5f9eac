"""Training-size sweep: nested stratified subsets, and `tomoflow experiments --train-fractions` end to end."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd
import pytest

from flows.cli import main
from tasks.sweep.analysis import nested_train_subsets, parse_fractions, write_subset_manifest


def _manifest(n_pos: int = 6, n_neg: int = 14) -> pd.DataFrame:
    rows = []
    for i in range(n_pos + n_neg):
        split = "train" if i % 5 < 3 else ("validation" if i % 5 == 3 else "test")
        for k in range(2):
            rows.append({"patient_id": f"P{i:03d}", "label": int(i < n_pos), "split": split,
                         "image_path": f"slices/P{i:03d}/{k}.png"})
    return pd.DataFrame(rows)


def test_subsets_are_nested_stratified_and_seeded(tmp_path: Path) -> None:
    frame = _manifest()
    subsets = nested_train_subsets(frame, [0.25, 0.5, 1.0], seed=3)
    train = frame[frame["split"] == "train"].groupby("patient_id")["label"].max()
    assert set(subsets[1.0]) == set(train.index)
    assert set(subsets[0.25]) < set(subsets[0.5]) < set(subsets[1.0])
    for patients in subsets.values():
        assert set(train[patients]) == {0, 1}  # both classes at every size
    assert subsets == nested_train_subsets(frame, [0.25, 0.5, 1.0], seed=3)
    assert subsets[0.5] != nested_train_subsets(frame, [0.5], seed=4)[0.5]

    path = tmp_path / "manifest.parquet"
    frame.to_parquet(path)
    written = pd.read_parquet(write_subset_manifest(path, subsets[0.25], 0.25))
    assert written["patient_id"][written["split"] == "train"].isin(subsets[0.25]).all()
    for split in ("validation", "test"):  # fixed
        assert written[written["split"] == split].reset_index(drop=True).equals(
            frame[frame["split"] == split].reset_index(drop=True))
    with pytest.raises(ValueError, match="not a fraction"):
        parse_fractions("0.5,1.5")


def test_sweep_cli_two_fractions_two_starting_points(prefect_harness, small_dataset: Path, tmp_path: Path) -> None:
    from synth.generate import generate_dataset

    # Starting point: a tomoflow model trained on collection A.
    assert main(["prepare", "--data-root", str(small_dataset), "--out", str(tmp_path / "a"), "--image-size", "40",
                 "--executor", "serial"]) == 0
    assert main(["train", "--manifest", str(tmp_path / "a" / "manifest.parquet"), "--out", str(tmp_path / "run-a"),
                 "--weights", "none", "--epochs", "1", "--batch-size", "8", "--image-size", "32", "--max-batches",
                 "2", "--num-workers", "0", "--device", "cpu"]) == 0
    data_b = tmp_path / "data-b"
    generate_dataset(data_b, patients=24, seed=21, rows=64, columns=48, frames=(6, 8), positive_fraction=0.4)
    settings = ["train.epochs=2", "train.image_size=32", "train.max_batches=3", "train.num_workers=0",
                "train.batch_size=8", "slices.image_size=40", "slices.executor=serial", "evaluate.bootstrap=100",
                "evaluate.gradcam_examples=0", "augment.offline_balance=false", "model.model=vgg16"]
    argv = ["experiments", "--data-root", str(data_b), "--out", str(tmp_path / "out"), "--train-fractions", "0.5,1",
            "--weights", f"none,{tmp_path / 'run-a'}", "--repeats", "2"]
    for s in settings:
        argv += ["--set", s]
    assert main(argv) == 0
    sweep = tmp_path / "out" / "sweep"
    table = pd.read_csv(sweep / "sweep.csv")
    for column in ("null_roc_auc", "trivial_roc_auc", "beats_trivial", "best_epoch", "optimizer_steps", "repeat",
                   "capped"):
        assert column in table.columns, column
    trained = table[table["fraction"] > 0]
    assert len(trained) == 8 and set(trained["fraction"]) == {0.5, 1.0} and set(trained["repeat"]) == {0, 1}
    # Zero-shot: the tomoflow start, on the target's test split before fine-tuning; none for scratch.
    zero = table[table["fraction"] == 0]
    assert len(zero) == 1 and zero["start"].iloc[0] == "from-run-a" and zero["train_patients"].iloc[0] == 0
    assert zero["optimizer_steps"].iloc[0] == 0
    # Each repeat draws its own subsets: the same sizes, other patients (at 0.5).
    assert trained.groupby(["weights", "repeat"])["train_patients"].apply(lambda s: s.is_monotonic_increasing).all()
    half = [set(pd.read_parquet(p).query("split == 'train'")["patient_id"])
            for p in sorted((tmp_path / "out").rglob("sweep-train-0500-r*.parquet"))]
    assert len(half) == 2 and len(half[0]) == len(half[1]) and half[0] != half[1]
    assert table["test_images"].nunique() == 1  # the same test split everywhere
    assert table["trivial_roc_auc"].nunique() == 1  # one floor: the same test images, the score chosen on validation
    # --set train.max_batches caps every run: it says so, and a capped arm cannot give an answer.
    assert trained["capped"].all() and (trained["epochs_run"] == 2).all()
    assert (trained["optimizer_steps"] >= 2).all() and (trained["optimizer_steps"] <= 2 * 3).all()
    assert (trained["best_epoch"] >= 1).all()
    # Run folders: a pre-trained arm's never reads like a scratch one.
    folders = sorted(p.name for p in (sweep / "runs").iterdir())
    assert any(f.startswith("scratch-f0500-r0") for f in folders)
    assert any(f.startswith("from-run-a-") and f.endswith("-f0500-r1") for f in folders)
    assert (sweep / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((sweep / "sweep.json").read_text())
    assert len(report["differences"]) == 2 and all(d["reference"] == "none" for d in report["differences"])
    for d in report["differences"]:
        assert d["repeats"] == 2 and len(d["per_repeat"]) == 2
        if d["low"] is not None:
            assert d["low"] <= d["high"]
    assert {v["fraction"] for v in report["verdict"]} == {0.5, 1.0}
    for v in report["verdict"]:
        assert v["verdict"] == "no answer" and any("under-trained" in r for r in v["reasons"]), v
        assert str(tmp_path) not in v["sentence"] and "run-a-" not in v["sentence"]  # short names, never paths
        # The fine-tuned arm beside its start before fine-tuning (the zero-shot row).
        assert v["zero_shot_roc_auc"] == pytest.approx(zero["roc_auc"].iloc[0])
        assert f"alone scored AUC {v['zero_shot_roc_auc']:.3f}" in v["sentence"]
    assert report["trivial"]["score"] and report["trivial"]["roc_auc"] is not None
    # One self-contained page: verdicts, plot, table, learning curves, the source, the overlap audit; no paths.
    page = (sweep / "index.html").read_text()
    for v in report["verdict"]:
        assert html.escape(v["sentence"], quote=False) in page
    assert page.count("data:image/png;base64,") == 2 and "<script" not in page and 'src="http' not in page
    assert "Overlap audit" in page and "from-run-a" in page and str(tmp_path) not in page
    assert "Its own test figures were not found" in page  # run-a was trained, never evaluated
    print((sweep / "sweep.md").read_text())
