"""Benchmark of the preparation stage on full-size synthetic volumes.

Prints, from one run (ratios against baselines measured in the same process):
  * extraction frames/s (decode + orient + window + letterbox + PNG + record) against the
    reader's decode-only frames/s on the same frames            target >= 0.9x
  * the single-slice strategy's cost per volume against decoding whole volumes the way
    Duke's reference reader does (float64, every frame)          target >= 30x
  * peak RSS of one extraction worker                            target <= 300 MiB
  * wall time of a cached `tomoflow prepare` rerun against the first run

Usage: .venv/bin/python bench/prepare.py [--patients 3] [--frames 49-60] [--reference-volumes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _plan(root: Path, strategy: str) -> list[dict]:
    from tasks.cohorts import build_volume_table, cohorts_from_labels, load_bcs_tables
    from tasks.slices import select_slices

    tables = load_bcs_tables(root)
    cohorts, rejects = cohorts_from_labels(tables.labels)
    volumes = build_volume_table(tables.file_paths, cohorts, tables.boxes, cohort_rejects=rejects)
    plan = select_slices(volumes, tables.boxes, strategy=strategy, seed=0)
    return plan[["patient_id", "study_uid", "view", "descriptive_path", "classic_path", "frames_rule"]].to_dict("records")


def _decode_only(root: Path, jobs: list[dict], out: Path) -> tuple[int, float]:
    """Decode exactly the frames extraction wrote, with pydicom alone."""
    from pydicom.pixels import iter_pixels

    from tasks.extract import RECORD_NAME, volume_dir
    from tasks.slices import VolumeResolver

    resolver = VolumeResolver(root)
    frames = 0
    start = time.perf_counter()
    for job in jobs:
        path, _ = resolver.resolve(job["descriptive_path"], job["classic_path"], job["patient_id"])
        record = json.loads((volume_dir(out, job["patient_id"], job["study_uid"], job["view"]) / RECORD_NAME).read_text())
        indices = [f["slice_index"] for f in record["frames"]]
        for _ in iter_pixels(path, indices=indices):
            frames += 1
    return frames, time.perf_counter() - start


def _reference_whole_volume(path: Path, view: str) -> float:
    """Duke's reference reading: decode every frame, orient, window in float64."""
    import pydicom

    start = time.perf_counter()
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.astype(np.float64)
    side = "R" if pixels[0][:, 0].sum() < pixels[0][:, -1].sum() else "L"
    if side != view[0].upper():
        pixels = np.flip(pixels, axis=(-1, -2))
    voi = ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    low = float(voi.WindowCenter) - float(voi.WindowWidth) / 2
    high = float(voi.WindowCenter) + float(voi.WindowWidth) / 2
    _ = np.clip((pixels - low) / (high - low), 0, 1) * 65535
    return time.perf_counter() - start


def _worker_peak_rss(root: Path, jobs: list[dict], out: Path) -> float:
    """Peak RSS (MiB) of a fresh process that extracts ``jobs`` like one worker does.

    Read from the child's own VmHWM: ru_maxrss would carry the parent's high-water mark
    (this benchmark's whole-volume reference decode) across fork and exec.
    """
    code = (
        "import json,sys; sys.path.insert(0, %r)\n"
        "from tasks.extract import extract_shard\n"
        "jobs=json.loads(sys.stdin.read())\n"
        "extract_shard(jobs, data_root=%r, out_dir=%r, image_size=224, seed=0)\n"
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
    ) % (str(REPO), str(root), str(out))
    res = subprocess.run([sys.executable, "-c", code], input=json.dumps(jobs), capture_output=True,
                         text=True, check=True)
    return int(res.stdout.strip().splitlines()[-1]) / 1024


def _cli_prepare(root: Path, out: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.cli", "prepare", "--data-root", str(root), "--out", str(out),
                    "--strategy", "single-slice"], cwd=REPO, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--frames", default="49-60")
    parser.add_argument("--reference-volumes", type=int, default=2)
    args = parser.parse_args()
    lo, hi = (int(x) for x in args.frames.split("-"))

    from tasks.extract import extract_shard
    from tasks.synthetic import generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        root = tmp_path / "data"
        t = time.perf_counter()
        summary = generate_dataset(root, patients=args.patients, seed=0, full_size=True, frames=(lo, hi),
                                   positive_fraction=0.5, reports=False)
        print(f"dataset: {summary['volumes']} full-size volumes ({summary['rows']}x{summary['columns']}, "
              f"{lo}-{hi} frames) generated in {time.perf_counter() - t:.0f} s")

        # 1. extraction vs decode-only on the same frames (lesion-slices: several frames per volume);
        #    each measured twice, interleaved, best of two (the machine may be shared).
        jobs = _plan(root, "lesion-slices")
        extract_times, decode_times = [], []
        for attempt in range(2):
            out = tmp_path / f"extract-{attempt}"
            t = time.perf_counter()
            extract_shard(jobs, data_root=str(root), out_dir=str(out), image_size=224, seed=0)
            extract_times.append(time.perf_counter() - t)
            frames, decode_s = _decode_only(root, jobs, out)
            decode_times.append(decode_s)
        extract_s, decode_s = min(extract_times), min(decode_times)
        print(f"extraction: {frames / extract_s:.2f} frames/s; decode only: {frames / decode_s:.2f} frames/s; "
              f"ratio {decode_s / extract_s:.2f}x (target >= 0.9x) over {frames} frames, best of 2")

        # 2. single-slice vs the reference reader's whole-volume decode, per volume
        single = _plan(root, "single-slice")
        out2 = tmp_path / "single"
        t = time.perf_counter()
        extract_shard(single, data_root=str(root), out_dir=str(out2), image_size=224, seed=0)
        single_per_volume = (time.perf_counter() - t) / len(single)
        from tasks.slices import VolumeResolver

        resolver = VolumeResolver(root)
        sample = single[: args.reference_volumes]
        ref = [_reference_whole_volume(resolver.resolve(j["descriptive_path"], j["classic_path"], j["patient_id"])[0],
                                       j["view"]) for j in sample]
        ref_per_volume = float(np.mean(ref))
        print(f"single-slice: {single_per_volume:.3f} s/volume; reference whole-volume read: "
              f"{ref_per_volume:.2f} s/volume (mean of {len(sample)}); speed-up {ref_per_volume / single_per_volume:.1f}x "
              f"(target >= 30x)")

        # 3. peak RSS of one worker extracting several frames per volume
        rss = _worker_peak_rss(root, jobs[:4], tmp_path / "rss")
        print(f"peak RSS of one extraction worker: {rss:.0f} MiB (target <= 300 MiB)")

        # 4. cached rerun of the whole flow against the first run
        env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"))
        env.pop("PREFECT_API_URL", None)
        first = _cli_prepare(root, tmp_path / "flow", env)
        second = _cli_prepare(root, tmp_path / "flow", env)
        print(f"tomoflow prepare: first run {first:.1f} s, cached rerun {second:.1f} s "
              f"({second / first:.2f}x of the first; Prefect's start-up is most of it)")


if __name__ == "__main__":
    main()
