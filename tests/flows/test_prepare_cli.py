"""`tomoflow prepare` as a user runs it, under faults that must not pass silently: changed inputs, paths
leading out, header values that must not print, missing files, a bad PREFECT_HOME, a full disk.

Each test runs the CLI in a subprocess (a temporary Prefect server, its own PREFECT_HOME)
on a small synthetic BCS-DBT collection.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.flows.cli_env import REPO
from tests.flows.cli_env import cli_env as _env
SECRET = "Quixote"


def _prepare(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "prepare", "--data-root", str(data), "--out", str(out),
            "--image-size", "32", "--workers", "1", *extra]


def _run(cmd: list[str], tmp_path: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("prepare-cli") / "data"
    generate_dataset(root, patients=12, seed=5, rows=64, columns=48, frames=(6, 10), positive_fraction=0.4)
    return root


def _copy(dataset: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    return data


def _file_paths(data: Path) -> Path:
    return next(data.glob("BCS-DBT*file-paths-train*.csv"))


def _labelled_rows(data: Path, table: pd.DataFrame) -> list[int]:
    """Indices of file-paths rows whose volume is labelled normal (so every strategy plans it)."""
    labels = pd.concat([pd.read_csv(p, dtype=str) for p in data.glob("BCS-DBT*labels*.csv")])
    normal = set(zip(*(labels.loc[labels["Normal"] == "1", c] for c in ("PatientID", "StudyUID", "View"))))
    return [i for i, r in table.iterrows() if (r["PatientID"], r["StudyUID"], r["View"]) in normal]


def _resolve(data: Path, row: pd.Series) -> Path:
    from tasks.prepare.locate import VolumeResolver

    path, how = VolumeResolver(data).resolve(row["descriptive_path"], row["classic_path"], row["PatientID"])
    assert path is not None, how
    return path


def _codes(out: Path) -> pd.Series:
    return pd.read_parquet(out / "rejects.parquet")["reason"].str.split(":").str[0]


def test_single_slice_records_boxed_views_as_not_selected(dataset: Path, tmp_path: Path) -> None:
    """A positive patient's views that single-slice did not pick are `not-selected`, not `no-box`."""
    out = tmp_path / "out"
    result = _run(_prepare(dataset, out, "--strategy", "single-slice"), tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rejects = pd.read_parquet(out / "rejects.parquet")
    assert "no-box" not in set(_codes(out))
    boxes = pd.concat([pd.read_csv(p) for p in dataset.glob("BCS-DBT*boxes*.csv")])
    boxed = set(zip(boxes["PatientID"], boxes["StudyUID"], boxes["View"]))
    volume_rows = rejects[rejects["kind"] == "volume"]
    skipped_boxed = [r for r in volume_rows.itertuples() if (r.patient_id, r.study_uid, r.view) in boxed]
    assert skipped_boxed, "the dataset should have boxed views single-slice does not pick"
    assert {r.reason for r in skipped_boxed} == {"not-selected"}
    accounting = json.loads((out / "cohort_summary.json").read_text())["accounting"]
    assert accounting["faults"] == 0


def test_report_cohort_without_labels_csv_is_not_a_fault(dataset: Path, tmp_path: Path) -> None:
    """With --reports and no labels CSV, volumes without a kept report are `no-report`, by design."""
    data = _copy(dataset, tmp_path)
    table = pd.read_csv(_file_paths(data), dtype=str)
    normal_patients = sorted({table.loc[i, "PatientID"] for i in _labelled_rows(data, table)})
    reports = pd.read_csv(data / "reports.csv", dtype=str, keep_default_na=False)
    # Two patients' studies without any report: outside the report-defined cohort.
    reports[~reports["patient_id"].isin(normal_patients[:2])].to_csv(data / "reports.csv", index=False)
    for labels in data.glob("BCS-DBT*labels*.csv"):
        labels.unlink()
    out = tmp_path / "out"
    result = _run(_prepare(data, out, "--reports", str(data / "reports.csv"), "--strategy", "single-slice"),
                  tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    codes = set(_codes(out))
    assert "no-report" in codes and "no-label" not in codes
    accounting = json.loads((out / "cohort_summary.json").read_text())["accounting"]
    assert accounting["rejected_by_reason"]["no-report"] > 0
    assert accounting["faults"] == 0


def test_changed_dicom_and_garbage_png_are_extracted_again(dataset: Path, tmp_path: Path) -> None:
    """Same size and mtime, other bytes: re-extracted; a PNG replaced by garbage is rewritten."""
    import pydicom

    data = _copy(dataset, tmp_path)
    out = tmp_path / "out"
    first = _run(_prepare(data, out, "--strategy", "single-slice"), tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    manifest = pd.read_parquet(out / "manifest.parquet")
    edited, damaged = manifest.iloc[0], manifest.iloc[1]
    source = data / edited["source_path"]
    ds = pydicom.dcmread(source)
    voi = ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    old_center = float(voi.WindowCenter)
    before = source.stat()
    raw = source.read_bytes()
    text = f"{old_center:g}".encode()
    new_text = f"{old_center + 1:g}".encode()
    assert len(text) == len(new_text) and raw.count(b"\x28\x00\x50\x10") >= 1
    start = raw.index(b"\x28\x00\x50\x10")  # (0028,1050) WindowCenter, little endian
    window = raw[start:start + 40]
    patched = raw[:start] + window.replace(text, new_text, 1) + raw[start + 40:]
    assert len(patched) == len(raw) and patched != raw
    source.write_bytes(patched)
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -r: same size, same mtime
    assert (source.stat().st_size, source.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    png = out / damaged["image_path"]
    good = png.read_bytes()
    png.write_bytes(os.urandom(len(good)))

    second = _run(_prepare(data, out, "--strategy", "single-slice"), tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    after = pd.read_parquet(out / "manifest.parquet")
    row = after[(after["patient_id"] == edited["patient_id"]) & (after["view"] == edited["view"])].iloc[0]
    assert row["window_center"] == pytest.approx(old_center + 1)
    assert hashlib.sha256(png.read_bytes()).hexdigest() == hashlib.sha256(good).hexdigest()


def test_paths_outside_data_root_are_rejected(dataset: Path, tmp_path: Path) -> None:
    """`../outside/x.dcm` and an absolute classic_path are never read."""
    data = _copy(dataset, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    csv = _file_paths(data)
    table = pd.read_csv(csv, dtype=str)
    victims = _labelled_rows(data, table)[:2]
    for i, row_index in enumerate(victims):
        shutil.move(str(_resolve(data, table.loc[row_index])), outside / f"x{i}.dcm")
    table.loc[victims[0], "descriptive_path"] = "../outside/x0.dcm"
    table.loc[victims[0], "classic_path"] = ""
    table.loc[victims[1], "descriptive_path"] = ""
    table.loc[victims[1], "classic_path"] = str(outside / "x1.dcm")
    table.to_csv(csv, index=False)
    out = tmp_path / "out"
    result = _run(_prepare(data, out, "--max-reject-fraction", "1"), tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rejects = pd.read_parquet(out / "rejects.parquet")
    keys = {(table.loc[i, "PatientID"], table.loc[i, "View"]) for i in victims}
    mine = rejects[[(p, v) in keys for p, v in zip(rejects["patient_id"], rejects["view"])]]
    labelled = mine[~mine["reason"].isin(["actionable"])]
    assert set(labelled["reason"].str.split(":").str[0]) <= {"outside-data-root"}
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert not any(str(outside) in str(p) or ".." in str(p) for p in manifest["source_path"])
    assert not [(p, v) for p, v in zip(manifest["patient_id"], manifest["view"]) if (p, v) in keys]


def test_pydicom_warning_and_bad_photometric_never_print_the_value(dataset: Path, tmp_path: Path) -> None:
    """An invalid UI value (pydicom warns) and PhotometricInterpretation never reach output."""
    import pydicom

    data = _copy(dataset, tmp_path)
    csv = _file_paths(data)
    table = pd.read_csv(csv, dtype=str)
    rows = _labelled_rows(data, table)
    # One volume found only by the SeriesInstanceUID search, its UID replaced by a name.
    moved = _resolve(data, table.loc[rows[0]])
    colour = _resolve(data, table.loc[rows[-1]])
    uid = pydicom.dcmread(moved, stop_before_pixels=True).SeriesInstanceUID
    raw = moved.read_bytes()
    moved.write_bytes(raw.replace(uid.encode(), (SECRET + "x" * (len(uid) - len(SECRET))).encode()))
    moved.parent.rename(moved.parent.with_name(moved.parent.name + "-moved"))
    # Another whose PhotometricInterpretation carries a name.
    ds = pydicom.dcmread(colour)
    ds.PhotometricInterpretation = SECRET.upper() + "1"
    ds.save_as(colour)
    out = tmp_path / "out"
    result = _run(_prepare(data, out, "--max-reject-fraction", "1"), tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    seen = result.stdout + result.stderr
    assert "Invalid value for VR UI" in seen  # the warning is shown, without its value
    assert SECRET.lower() not in seen.lower()
    for written in (out / "rejects.parquet", out / "cohort_summary.json"):
        assert SECRET.lower().encode() not in written.read_bytes().lower()
    assert "Photometric Interpretation (0028,0004)" in " ".join(pd.read_parquet(out / "rejects.parquet")["reason"])
    assert len(table)


def test_missing_files_stop_before_extraction(dataset: Path, tmp_path: Path) -> None:
    """Thousands of rows pointing at missing files stop after the existence check."""
    data = _copy(dataset, tmp_path)
    csv = _file_paths(data)
    table = pd.read_csv(csv, dtype=str)
    labels_csv = next(data.glob("BCS-DBT*labels-train*.csv"))
    labels = pd.read_csv(labels_csv, dtype=str)
    n = 3000
    ghosts = pd.DataFrame({
        "PatientID": [f"DBT-P9{i:05d}" for i in range(n)], "StudyUID": [f"DBT-S9{i:05d}" for i in range(n)],
        "View": "lcc",
        "descriptive_path": [f"Breast-Cancer-Screening-DBT/DBT-P9{i:05d}/s/1-1/1-1.dcm" for i in range(n)],
        "classic_path": [f"Breast-Cancer-Screening-DBT/DBT-P9{i:05d}/1.2/1.3/1-1.dcm" for i in range(n)],
    })
    pd.concat([table, ghosts]).to_csv(csv, index=False)
    ghost_labels = ghosts[["PatientID", "StudyUID", "View"]].assign(Normal="1", Actionable="0", Benign="0",
                                                                     Cancer="0")
    pd.concat([labels, ghost_labels]).to_csv(labels_csv, index=False)
    out = tmp_path / "out"
    result = _run(_prepare(data, out, "--normal-fraction", "1.0"), tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "missing-file" in result.stderr and "Traceback" not in result.stderr
    assert not (out / "manifest.parquet").exists()
    assert not (out / "slices").exists() or list((out / "slices").rglob("volume.json")) == []
    assert (_codes(out) == "missing-file").sum() >= n


def test_unwritable_prefect_home_fails_at_once(tmp_path: Path) -> None:
    """A PREFECT_HOME under a regular file is named at once, before any server start."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    env = _env(tmp_path)
    env["PREFECT_HOME"] = str(blocker / "home")
    result = subprocess.run(_prepare(tmp_path, tmp_path / "out"), cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert f"PREFECT_HOME {blocker / 'home'}" in result.stderr and "which is a file" in result.stderr
    assert "Starting temporary server" not in result.stderr and "Traceback" not in result.stderr


DISK_SCRIPT = r"""
set -u
mount -t tmpfs -o size={size} tmpfs "$OUT_ROOT" || exit 77
"$PY" -m flows.cli prepare --data-root "$DATA" --out "$OUT_ROOT/out" --image-size 32 --workers 1 \
    --strategy all-slices --normal-fraction 1.0 > "$LOGS/full.out" 2> "$LOGS/full.err"
echo $? > "$LOGS/full.rc"
mount -o remount,size=256m "$OUT_ROOT"
"$PY" -m flows.cli prepare --data-root "$DATA" --out "$OUT_ROOT/out" --image-size 32 --workers 1 \
    --strategy all-slices --normal-fraction 1.0 > "$LOGS/grown.out" 2> "$LOGS/grown.err"
echo $? > "$LOGS/grown.rc"
cp "$OUT_ROOT/out/manifest.parquet" "$OUT_ROOT/out/rejects.parquet" "$LOGS/" 2>/dev/null
exit 0
"""


def test_disk_full_is_not_cached_as_a_reject(dataset: Path, tmp_path: Path) -> None:
    """Prepare into a full tmpfs stops with one line; once the disk grows, the rerun is whole."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a private tmpfs")
    reference = tmp_path / "reference"
    ok = _run(_prepare(dataset, reference, "--strategy", "all-slices", "--normal-fraction", "1.0"), tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    expected = len(pd.read_parquet(reference / "manifest.parquet"))
    mount, logs = tmp_path / "mnt", tmp_path / "logs"
    mount.mkdir()
    logs.mkdir()
    env = _env(tmp_path) | {"OUT_ROOT": str(mount), "DATA": str(dataset), "LOGS": str(logs), "PY": sys.executable}
    size = "600k"
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", DISK_SCRIPT.replace("{size}", size)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode == 77 or not (logs / "full.rc").exists():
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {proc.stderr[-300:]}")
    full_err = (logs / "full.err").read_text()
    assert (logs / "full.rc").read_text().strip() == "2", full_err[-2000:]
    assert "No space left on device" in full_err and "run the same command again" in full_err
    assert "Traceback" not in full_err
    assert (logs / "grown.rc").read_text().strip() == "0", (logs / "grown.err").read_text()[-2000:]
    assert len(pd.read_parquet(logs / "manifest.parquet")) == expected
    reasons = " ".join(pd.read_parquet(logs / "rejects.parquet")["reason"])
    assert "No space left" not in reasons and "unreadable" not in reasons
