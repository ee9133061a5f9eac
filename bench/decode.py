"""Benchmark: one slice vs the whole volume of a full-size BCS-DBT-like JPEG 2000 file.

Writes one synthetic volume the size of the real ones (2457 x 1890, 10-bit, JPEG 2000
lossless, about 1.3 MB per frame like the collection's ~1 MB) to a temporary folder, then
measures, each in a fresh Python process so that peak memory is that operation's alone:

* ``reader, one slice``: ``read_frames(path, [slice], view=...)`` (the extraction path);
* ``reader, all slices``: ``read_frames(path, view=...)``, frames consumed one at a time;
* ``pydicom, one frame``: ``pydicom.pixels.pixel_array(path, index=slice)`` (decode only);
* ``pydicom, whole volume``: ``dcmread(path).pixel_array``, the baseline: what a reader that
  decodes the volume to get a slice pays (Duke's reader then also converts it to float64).

Ratios are against the baseline measured in the same run. Usage::

    .venv/bin/python bench/decode.py [--frames 60] [--rows 2457 --columns 1890] [--slice 30]
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

ROOT = Path(__file__).resolve().parents[1]

#: (mode, label) in the order they are run and printed.
MODES = [
    ("pydicom-volume", "pydicom, whole volume (baseline)"),
    ("pydicom-one", "pydicom, one frame (decode only)"),
    ("reader-one", "reader, one slice"),
    ("reader-all", "reader, all slices"),
]
TARGET_COST_RATIO = 1 / 20
TARGET_ONE_SLICE_RSS_MIB = 300.0


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM: of this address space only, reset by exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _volume(n_frames: int, rows: int, columns: int, seed: int):
    """Stored 10-bit frames: a breast on the left edge with smooth, slowly varying texture.

    Multi-scale smooth noise (bicubic-upsampled random fields) plus a little pixel noise,
    so JPEG 2000 compresses it about as much as real DBT; texture drifts from slice to
    slice as a tomosynthesis stack does. The background is a flat 0 like the collection's.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)

    def field(step: int):
        low = rng.standard_normal((rows // step + 2, columns // step + 2)).astype(np.float32)
        image = Image.fromarray(low, mode="F").resize((columns, rows), Image.Resampling.BICUBIC)
        return np.asarray(image)

    def texture():
        return 0.6 * field(256) + 0.3 * field(48) + 0.15 * field(12)

    fixed, drift_a, drift_b = texture(), texture(), texture()
    r = np.arange(rows, dtype=np.float32)[:, None]
    c = np.arange(columns, dtype=np.float32)[None, :]
    inside = ((r - rows / 2) / (0.47 * rows)) ** 2 + (c / (0.85 * columns)) ** 2 < 1
    frames = np.zeros((n_frames, rows, columns), dtype=np.uint16)
    for k in range(n_frames):
        phase = np.pi * k / max(1, n_frames - 1)
        tex = fixed + 0.5 * (np.cos(phase) * drift_a + np.sin(phase) * drift_b)
        tex += rng.normal(0.0, 2.0 / 120.0, (rows, columns)).astype(np.float32)
        frames[k] = np.where(inside, np.clip(600 + 120 * tex, 1, 1023), 0)
    return frames


def _child(args: argparse.Namespace) -> None:
    """Run one measurement in this (fresh) process and print it as JSON."""
    sys.path.insert(0, str(ROOT))
    import numpy as np  # noqa: F401  (imports before the clock, like a warm worker)
    from pydicom import dcmread
    from pydicom.pixels import pixel_array

    from tasks.reader.frames import read_frames

    result: dict[str, object] = {"import_rss_mib": _peak_rss_mib()}
    path = args.volume
    if args.child == "generate":
        from synth.dicom_writer import write_dbt_dicom

        start = time.perf_counter()
        frames = _volume(args.frames, args.rows, args.columns, args.seed)
        # The breast is on the left while the view says right: the reader must rotate.
        write_dbt_dicom(path, frames, patient_id="DBT-BENCH", study_uid="DBT-SBENCH",
                        view=args.view, window_center=600, window_width=700)
        result.update(seconds=time.perf_counter() - start, frames=args.frames)
    else:
        start = time.perf_counter()
        if args.child == "reader-one":
            out = list(read_frames(path, [args.slice], view=args.view, image_size=args.image_size))
            result["rotated"] = out[0].rotated
            n = len(out)
        elif args.child == "reader-all":
            n = 0
            for frame in read_frames(path, view=args.view, image_size=args.image_size):
                n += 1  # consumed and dropped, as the extraction stage does
        elif args.child == "pydicom-one":
            pixel_array(path, index=args.slice)
            n = 1
        elif args.child == "pydicom-volume":
            n = dcmread(path).pixel_array.shape[0]
        else:
            raise SystemExit(f"unknown mode {args.child!r}")
        result.update(seconds=time.perf_counter() - start, frames=n)
    result["peak_rss_mib"] = _peak_rss_mib()
    print(json.dumps(result))


def _run(mode: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode,
           "--volume", str(args.volume), "--frames", str(args.frames), "--rows", str(args.rows),
           "--columns", str(args.columns), "--slice", str(args.slice), "--view", args.view,
           "--seed", str(args.seed)]
    if args.image_size:
        cmd += ["--image-size", str(args.image_size)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--frames", type=int, default=60, help="frames in the volume (default 60)")
    add("--rows", type=int, default=2457, help="rows per frame (default 2457)")
    add("--columns", type=int, default=1890, help="columns per frame (default 1890)")
    add("--slice", type=int, default=30, help="the slice read alone (default 30)")
    add("--view", default="rcc", help="CSV view handed to the reader (default rcc)")
    add("--image-size", type=int, default=None, help="letterbox size for the reader")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic volume")
    parser.add_argument("--volume", type=Path, default=None,
                        help="reuse (or write) the volume here instead of a temporary file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return
    if not 0 <= args.slice < args.frames:
        parser.error(f"--slice {args.slice} is not in 0..{args.frames - 1}")

    with tempfile.TemporaryDirectory(prefix="tomoflow-bench-") as tmp:
        if args.volume is None:
            args.volume = Path(tmp) / "volume.dcm"
        if not args.volume.exists():
            made = _run("generate", args)
            print(f"wrote {args.volume}: {args.frames} x {args.rows} x {args.columns} JPEG 2000 "
                  f"lossless in {made['seconds']:.1f} s")
        size_mb = args.volume.stat().st_size / 1e6
        print(f"file {size_mb:.1f} MB ({size_mb / args.frames:.2f} MB/frame); "
              f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
        results = {mode: _run(mode, args) for mode, _ in MODES}

    base = results["pydicom-volume"]
    print()
    print(f"{'measurement':36s} {'seconds':>8s} {'frames/s':>9s} {'cost/base':>10s} "
          f"{'peak RSS MiB':>13s} {'RSS/base':>9s}")
    for mode, label in MODES:
        r = results[mode]
        print(f"{label:36s} {r['seconds']:8.2f} {r['frames'] / r['seconds']:9.2f} "
              f"{r['seconds'] / base['seconds']:10.4f} {r['peak_rss_mib']:13.0f} "
              f"{r['peak_rss_mib'] / base['peak_rss_mib']:9.3f}")
    print(f"(python + imports alone: {results['reader-one']['import_rss_mib']:.0f} MiB; "
          f"seconds exclude interpreter start and imports)")

    one, every, decode = results["reader-one"], results["reader-all"], results["pydicom-one"]
    cost = one["seconds"] / base["seconds"]
    cost_ok = "PASS" if cost <= TARGET_COST_RATIO else "FAIL"
    rss_ok = "PASS" if one["peak_rss_mib"] < TARGET_ONE_SLICE_RSS_MIB else "FAIL"
    rate_all, rate_base = every["frames"] / every["seconds"], base["frames"] / base["seconds"]
    steps = "header, window, orientation" + (", letterbox" if args.image_size else "")
    print()
    print(f"one slice / whole volume (pydicom baseline): {cost:.4f} = 1/{1 / cost:.0f} "
          f"(target <= 1/{1 / TARGET_COST_RATIO:.0f}): {cost_ok}")
    print(f"one-slice peak RSS: {one['peak_rss_mib']:.0f} MiB "
          f"(target < {TARGET_ONE_SLICE_RSS_MIB:.0f}): {rss_ok}")
    print(f"reader all slices vs pydicom whole volume: {rate_all:.2f} vs {rate_base:.2f} frames/s "
          f"({rate_all / rate_base:.2f}x), peak RSS {every['peak_rss_mib']:.0f} vs "
          f"{base['peak_rss_mib']:.0f} MiB")
    print(f"reader one slice vs pydicom one-frame decode: "
          f"{one['seconds'] / decode['seconds']:.2f}x the time ({steps}); "
          f"rotated={one.get('rotated')}")


if __name__ == "__main__":
    main()
