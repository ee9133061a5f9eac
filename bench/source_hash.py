"""Benchmark: what the extraction cache's content hash costs next to extracting one slice.

Issue 18 keys each volume's record on the SHA-256 of the DICOM file's bytes
(:mod:`tasks.prepare.source_hash`). Writes one synthetic BCS-DBT-shaped volume (full size by
default: 2457 x 1890, JPEG 2000 lossless) and measures, in this process:

* ``extract one slice`` (the baseline): ``read_frames(path, [slice], view=..., image_size=224)``,
  the reduced-resolution single-slice extraction path;
* ``sha256 of the file``: :func:`tasks.core.digest.sha256_file` (first extraction, and any
  rerun after the file's stat changed);
* ``memoised check``: :func:`tasks.prepare.source_hash.source_sha256` with a record whose stat
  matches (every rerun with nothing changed).

Ratios are against the baseline measured in the same run. Usage::

    .venv/bin/python bench/source_hash.py [--frames 20] [--rows 2457 --columns 1890]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--rows", type=int, default=2457)
    parser.add_argument("--columns", type=int, default=1890)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from synth.dicom_writer import write_dbt_dicom
    from tasks.reader.frames import read_frames
    from tasks.core.digest import sha256_file
    from tasks.prepare.source_hash import source_sha256
    from tests.conftest import breast_phantom

    with tempfile.TemporaryDirectory() as tmp:
        frames = breast_phantom(args.frames, args.rows, args.columns, side="R")
        path = write_dbt_dicom(Path(tmp) / "volume.dcm", frames, view="rcc", patient_id="DBT-P00001",
                               study_uid="DBT-S00001", window_center=512.0, window_width=600.0)
        size_mb = path.stat().st_size / 1e6
        middle = args.frames // 2
        extract = _best_of(lambda: list(read_frames(path, [middle], view="rcc", image_size=224)), args.repeat)
        digest = _best_of(lambda: sha256_file(path), args.repeat)
        sha, _ = source_sha256(path)
        record = {"source_sha256": sha, "source_stat": source_sha256(path)[1]}
        memo = _best_of(lambda: source_sha256(path, record), args.repeat)
    print(f"volume: {args.frames} frames of {args.rows} x {args.columns}, {size_mb:.1f} MB")
    print(f"extract one slice (baseline)  {extract * 1e3:9.1f} ms  1.00x")
    print(f"sha256 of the file            {digest * 1e3:9.1f} ms  {digest / extract:.2f}x  "
          f"({size_mb / digest:.0f} MB/s)")
    print(f"memoised check (stat matches) {memo * 1e3:9.3f} ms  {memo / extract:.4f}x")


if __name__ == "__main__":
    main()
