"""``tomoflow score`` and evaluate's whole-volume level through the CLI.

On a synthetic collection with its labels, boxes and reports removed, and on a plain folder of
DICOMs: outputs, the threshold recorded by evaluate, incremental reruns, a killed run resumed,
and bad input (status rows, or one line and exit 2).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pydicom
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
    return env


def _cli(home: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=_env(home),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def setup(prefect_harness, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny trained run on a synthetic collection, and a copy of the collection without labels/boxes/reports."""
    from flows.prepare import prepare_data
    from flows.train import train_classifier
    from synth.generate import generate_dataset
    from tasks.core.config import DataConfig, ModelConfig, PrepareConfig, SlicesConfig, TrainConfig, TrainParams

    root = tmp_path_factory.mktemp("score")
    data = root / "data"
    generate_dataset(data, patients=12, seed=1, rows=64, columns=48, frames=(4, 6), reports=True)
    manifest = prepare_data(config=PrepareConfig(
        data=DataConfig(data_root=str(data), output_dir=str(root / "prepared")),
        slices=SlicesConfig(strategy="single-slice", image_size=48, executor="serial",
                            split_fractions=(0.4, 0.3, 0.3))))["manifest"]
    run = root / "run"
    train_classifier(config=TrainConfig(
        manifest=manifest, run_dir=str(run), model=ModelConfig(model="vgg16", weights="none"),
        train=TrainParams(epochs=1, batch_size=8, image_size=32, max_batches=2, num_workers=0, device="cpu")))
    new = root / "new"
    shutil.copytree(data, new)
    for path in [*new.glob("*labels*"), *new.glob("*boxes*"), *new.glob("reports*")]:
        path.unlink()
    home = root / "prefect-home"
    home.mkdir()
    return {"data": data, "new": new, "run": run, "manifest": Path(manifest), "home": home, "root": root}


def _summary(out: Path) -> dict:
    return json.loads((out / "score_summary.json").read_text())


def test_evaluate_records_the_threshold_and_the_whole_volume_level(setup: dict[str, Path]) -> None:
    out = setup["root"] / "evaluation"
    done = _cli(setup["home"], "evaluate", "--run", str(setup["run"]), "--out", str(out), "--data-root",
                str(setup["data"]), "--bootstrap", "20", "--device", "cpu", "--threshold-rule", "youden")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    whole = metrics["levels"]["whole_volume"]
    frames = pd.read_parquet(out / "volume_frames.parquet")
    test = frames[frames["split"].eq("test")]
    assert whole["n"] == test.groupby(["patient_id", "study_uid", "view"]).ngroups > 0
    assert whole["frames_scored"] == len(test) and whole["frame_stride"] == 1
    # Every frame of each test volume was read, not only the manifest's slice.
    assert (test.groupby(["patient_id", "study_uid", "view"]).size() == test.groupby(
        ["patient_id", "study_uid", "view"])["n_frames"].first()).all()
    assert {"roc_auc", "sensitivity", "specificity"} <= set(whole["metrics"])
    assert "null_roc_auc" in whole and "intervals" in whole and whole["trivial"]["score"] == metrics["trivial"]["score"]
    assert {"roc_auc", "sensitivity"} <= set(whole["topk_mean"]["metrics"])
    assert whole["top_frame_vs_box"]["n"] == int((frames[frames["split"].eq("test")].drop_duplicates(
        ["patient_id", "study_uid", "view"]).pipe(lambda t: (t["label"].eq(1) & t["box_slice"].notna()).sum())))
    recorded = json.loads((setup["run"] / "threshold.json").read_text())
    assert recorded["threshold"] == metrics["threshold"] and "Youden" in recorded["source"]
    assert metrics["threshold_source"] == recorded["source"]
    html = (out / "report.html").read_text()
    assert html.index("What a deployment would see") < html.index('id="summary"')
    # --threshold overrides and says so.
    again = _cli(setup["home"], "evaluate", "--run", str(setup["run"]), "--out", str(setup["root"] / "eval-fixed"),
                 "--data-root", str(setup["data"]), "--bootstrap", "0", "--device", "cpu", "--threshold", "0.3")
    assert again.returncode == 0, again.stderr[-3000:]
    fixed = json.loads((setup["root"] / "eval-fixed" / "metrics.json").read_text())
    assert fixed["threshold"] == 0.3 and "--threshold" in fixed["threshold_source"]
    assert json.loads((setup["run"] / "threshold.json").read_text()) == recorded  # the run keeps the chosen one


def test_score_without_labels_then_only_new_volumes(setup: dict[str, Path]) -> None:
    new, out = setup["new"], setup["root"] / "scores"
    csvs = sorted(new.glob("*file-paths*"))
    held_back = {p: p.read_text() for p in csvs}
    for p in csvs:  # the first run sees the collection without the last 3 rows of each file-paths CSV
        lines = held_back[p].splitlines(keepends=True)
        p.write_text("".join(lines[:-3]))
    first = _cli(setup["home"], "score", "--run", str(setup["run"]), "--data-root", str(new), "--out", str(out),
                 "--device", "cpu", "--workers", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    s1 = _summary(out)
    for p, text in held_back.items():
        p.write_text(text)
    second = _cli(setup["home"], "score", "--run", str(setup["run"]), "--data-root", str(new), "--out", str(out),
                  "--device", "cpu", "--workers", "0")
    assert second.returncode == 0, second.stderr[-3000:]
    s2 = _summary(out)
    assert s2["listed"] == s1["listed"] + 3 * len(csvs) and s2["scored"] == s2["listed"] and s2["failed"] == 0
    assert s2["reused"] >= s1["scored"] and s2["reused"] < s2["scored"]
    assert s2["threshold"] == json.loads((setup["run"] / "threshold.json").read_text())["threshold"]
    assert "validation" in s2["threshold_source"] and s2["checkpoint_sha256"] and s2["listed_by"] == "file-paths CSV"

    frames = pd.read_parquet(out / "frame_scores.parquet")
    volumes = pd.read_parquet(out / "volumes.parquet")
    assert list(frames.columns) == ["patient_id", "study_uid", "view", "frame", "probability"]
    assert len(frames) == volumes["n_frames"].sum() == volumes["frames_scored"].sum()
    top = frames.loc[frames.groupby(["patient_id", "study_uid", "view"])["probability"].idxmax()]
    merged = volumes.merge(top, on=["patient_id", "study_uid", "view"])
    assert (merged["score_max"] == merged["probability"]).all() and (merged["top_frame"] == merged["frame"]).all()
    assert (volumes["flagged"] == volumes["score_max"].ge(s2["threshold"])).all()
    worklist = pd.read_csv(out / "worklist.csv")
    assert list(worklist.columns[:5]) == ["patient_id", "study_uid", "views", "score_max", "score_topk"]
    assert worklist["score_max"].is_monotonic_decreasing and set(worklist["status"]) == {"scored"}

    # The model saw the prepared PNGs' pixels: the manifest slice's score equals predict's on its PNG.
    from models.training.checkpoint import load_classifier
    from tasks.core.run_folder import chosen_checkpoint
    from models.inference.predict import predict

    manifest = pd.read_parquet(setup["manifest"])
    pred = predict(load_classifier(chosen_checkpoint(setup["run"])), manifest, root=setup["manifest"].parent,
                   split="test", image_size=32)
    joined = pred.merge(frames, left_on=["patient_id", "study_uid", "view", "slice_index"],
                        right_on=["patient_id", "study_uid", "view", "frame"], suffixes=("", "_score"))
    assert len(joined) == len(pred)
    assert (joined["probability"] - joined["probability_score"]).abs().max() < 1e-5

    html = (out / "worklist.html").read_text()
    assert html.count("data:image/png;base64,") == 2 * len(worklist) and "http" not in html
    assert not any(pid in html for pid in worklist["patient_id"]) and not any(s in html for s in worklist["study_uid"])


def test_plain_folder_with_bad_files_scores_the_rest(setup: dict[str, Path], make_dbt) -> None:
    plain, out = setup["root"] / "plain", setup["root"] / "plain-scores"
    plain.mkdir()
    sources = sorted(setup["data"].rglob("*.dcm"))[:4]
    for i, path in enumerate(sources):
        shutil.copy(path, plain / f"v{i}.dcm")
    ct = pydicom.dcmread(sources[0])
    ct.Modality = "CT"
    ct.save_as(plain / "ct.dcm", enforce_file_format=True)
    truncated = sources[1].read_bytes()
    (plain / "cut.dcm").write_bytes(truncated[: len(truncated) - len(truncated) // 3])
    done = _cli(setup["home"], "score", "--run", str(setup["run"]), "--data-root", str(plain), "--out", str(out),
                "--device", "cpu", "--threshold", "0.3", "--workers", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--threshold" in done.stdout
    s = _summary(out)
    assert s["listed"] == 6 and s["scored"] == 4 and s["failed"] == 2 and s["listed_by"] == "header"
    assert s["threshold"] == 0.3 and "--threshold" in s["threshold_source"]
    volumes = pd.read_parquet(out / "volumes.parquet")
    status = dict(zip(volumes["status"].str.split(":").str[0], volumes["status"]))
    assert "not a breast image" in status and "unreadable" in status
    assert volumes.loc[volumes["status"].eq("scored"), "study_uid"].str.startswith("1.").all()  # from the header


def test_bad_run_or_empty_folder_is_one_line_and_exit_2(setup: dict[str, Path]) -> None:
    empty_run = setup["root"] / "not-a-run"
    empty_run.mkdir()
    (empty_run / "config.json").write_text(json.dumps({"train": {"image_size": 32}}))
    done = _cli(setup["home"], "score", "--run", str(empty_run), "--data-root", str(setup["new"]), "--out",
                str(setup["root"] / "x"))
    assert done.returncode == 2 and "no usable checkpoint" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    (empty_run / "best.pt").write_bytes(b"not a checkpoint")
    done = _cli(setup["home"], "score", "--run", str(empty_run), "--data-root", str(setup["new"]), "--out",
                str(setup["root"] / "x"))
    assert done.returncode == 2 and "truncated or damaged" in done.stderr and "Traceback" not in done.stderr
    nothing = setup["root"] / "nothing"
    nothing.mkdir()
    (nothing / "a.txt").write_text("x")
    done = _cli(setup["home"], "score", "--run", str(setup["run"]), "--data-root", str(nothing), "--out",
                str(setup["root"] / "y"))
    assert done.returncode == 2 and "no DICOM file found" in done.stderr and "Traceback" not in done.stderr


def test_a_killed_run_resumes(setup: dict[str, Path]) -> None:
    cache = setup["run"] / ".volume-scores"
    before = set(cache.rglob("*.parquet"))
    out = setup["root"] / "killed"
    args = [sys.executable, "-m", "flows.cli", "score", "--run", str(setup["run"]), "--data-root", str(setup["new"]),
            "--out", str(out), "--device", "cpu", "--workers", "0", "--stride", "2"]
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(setup["home"]), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (set(cache.rglob("*.parquet")) - before) and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(set(cache.rglob("*.parquet")) - before)
    assert written >= 1 and not (out / "score_summary.json").exists()
    done = _cli(setup["home"], "score", "--run", str(setup["run"]), "--data-root", str(setup["new"]), "--out",
                str(out), "--device", "cpu", "--workers", "0", "--stride", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    s = _summary(out)
    assert s["reused"] == written and s["scored"] == s["listed"] and s["stride"] == 2
