"""Benchmark of the preparation stage on full-size synthetic volumes (2457 x 1890, JPEG 2000).

Prints, from one run (every ratio against a baseline measured in the same process run,
interleaved and best of ``--repeat``, because the machine may be shared):

  1. the per-level decode table: each JPEG 2000 resolution level's decode time (CPU ms,
     best of 5) and output size, against full resolution;
  2. extraction frames/s (decode + window + orient + letterbox + PNG + record; the reader
     chooses the level) at 224 and 500 px on all cores, against
       * full-resolution decode-only frames/s of one core        target >= 10x (224), >= 4x (500)
       * reduced decode-only frames/s of all cores, same frames   target >= 0.9x
     and where the rest of the time goes (per-frame CPU of each step, one core);
  3. peak RSS of one extraction worker                           target <= 300 MiB
  4. a cached `tomoflow prepare` rerun against a no-op Prefect flow run in the same
     environment (both as a fresh CLI process)                    target <= 1.3x
     and tomoflow's own fixed cost (imports, flow body) next to Prefect's;
  5. a projection for the full collection in core-hours.

Usage: .venv/bin/python bench/prepare.py [--patients 2] [--frames 10-12] [--workers N] [--data DIR]
                                        [--api-url http://127.0.0.1:4200/api]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: Frames of the whole collection if every frame of every volume were decoded, and the
#: frames all-slices decodes (docs/scaling.md, section (a)).
COLLECTION_FRAMES = 22_032 * 70
ALL_SLICES_FRAMES = 243_565


def _jobs(root: Path) -> list[dict]:
    """Every frame of every volume (rule ``all``): the all-slices rule of positive volumes."""
    from tasks.prepare.cohorts import build_volume_table, cohorts_from_labels
    from tasks.prepare.bcs_csv import load_bcs_tables
    from tasks.prepare.slices import select_slices

    tables = load_bcs_tables(root)
    cohorts, rejects = cohorts_from_labels(tables.labels)
    volumes = build_volume_table(tables.file_paths, cohorts, tables.boxes, cohort_rejects=rejects)
    plan = select_slices(volumes, tables.boxes, strategy="all-slices", normal_fraction=1.0, seed=0)
    keep = ["patient_id", "study_uid", "view", "descriptive_path", "classic_path"]
    return [{**row, "frames_rule": "all"} for row in plan[keep].to_dict("records")]


def _codestreams(path: str) -> tuple[object, list[bytes]]:
    from pydicom.encaps import get_frame

    from tasks.reader.header import read_header as _read_header

    header = _read_header(path)
    n = header.info.n_frames
    with open(path, "rb") as fh:
        streams = []
        for i in range(n):
            fh.seek(header.pixels_at)
            streams.append(get_frame(fh, i, number_of_frames=n))
    return header, streams


def _cpu_best(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def _level_table(path: str) -> dict[int, float]:
    from tasks.reader import j2k

    _, streams = _codestreams(path)
    info = j2k.codestream_info(streams[0])
    rows: dict[int, float] = {}
    print("\n1. decode of one frame, by resolution level (CPU ms, best of 5; one core)")
    print("   | levels discarded | output | decode ms | vs full |")
    print("   |---:|---|---:|---:|")
    for level in range(0, 4):
        ms = 1000 * _cpu_best(lambda: j2k.decode(streams[0], level=level))
        rows[level] = ms
        shape = j2k.reduced_shape(info["rows"], info["columns"], level)
        print(f"   | {level} | {shape[0]} x {shape[1]} | {ms:.1f} | {rows[0] / ms:.1f}x |")
    edges = 1000 * _cpu_best(lambda: [j2k.decode(streams[0], area=(x, 0, x + 1, info["rows"]))
                                      for x in (0, info["columns"] - 1)])
    print(f"   full-resolution edge columns (orientation, once per volume): {edges:.1f} ms")
    return rows


# ---------------------------------------------------------------------------- workers


def _init_worker() -> None:
    sys.path.insert(0, str(REPO))
    import tasks.prepare.extract  # noqa: F401  (warm: the pool's start is a fixed cost, not measured)
    from tasks.reader import j2k

    j2k.available()


def _decode_shard(args: tuple[list[str], int | None, int]) -> tuple[int, float]:
    """Decode-only: every frame of the files at the level the reader picks (None: full, pydicom)."""
    from pydicom.pixels import iter_pixels

    from tasks.reader import j2k
    from tasks.reader.decode import decode_level

    paths, image_size, edges = args
    frames = 0
    cpu = time.process_time()
    for path in paths:
        if image_size is None:
            for _ in iter_pixels(path):
                frames += 1
            continue
        header, streams = _codestreams(path)
        info = header.info
        level = decode_level(info.rows, info.columns, j2k.codestream_info(streams[0])["levels"], image_size)
        if edges:
            for x in (0, info.columns - 1):
                j2k.decode(streams[0], area=(x, 0, x + 1, info.rows))
        for stream in streams:
            j2k.decode(stream, level=level)
            frames += 1
    return frames, time.process_time() - cpu


def _extract_shard(args: tuple[list[dict], str, str, int]) -> tuple[int, float]:
    from tasks.prepare.extract import extract_shard

    jobs, root, out, size = args
    cpu = time.process_time()
    result = extract_shard(jobs, data_root=root, out_dir=out, image_size=size, seed=0)
    cpu = time.process_time() - cpu
    frames = 0
    for record in result["records"]:
        frames += len(json.loads(Path(record).read_text())["frames"])
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    return frames, peak / 1024, cpu


def _paths(root: Path, jobs: list[dict]) -> list[str]:
    from tasks.prepare.locate import VolumeResolver

    resolver = VolumeResolver(root)
    return [str(resolver.resolve(j["descriptive_path"], j["classic_path"], j["patient_id"])[0]) for j in jobs]


def _step_costs(path: str, size: int) -> dict[str, float]:
    """Per-frame CPU ms of each extraction step on one core (best of 5 over the first frame)."""
    import io

    from PIL import Image

    from tasks.reader import j2k
    from tasks.reader.render import render as _render
    from tasks.reader.decode import decode_level
    from tasks.reader.geometry import letterbox
    from tasks.core.files import atomic_write_png

    header, streams = _codestreams(path)
    info = header.info
    level = decode_level(info.rows, info.columns, j2k.codestream_info(streams[0])["levels"], size)
    raw = j2k.to_stored(*j2k.decode(streams[0], level=level), info.pixel_representation)
    tables: dict = {}
    image = _render(raw, header.ds, 0, info, tables=tables)[0]
    boxed = letterbox(image, size, native_shape=(info.rows, info.columns), level=level)[0]
    with tempfile.TemporaryDirectory() as tmp:
        costs = {
            "decode": _cpu_best(lambda: j2k.decode(streams[0], level=level)),
            "window": _cpu_best(lambda: _render(raw, header.ds, 0, info, tables=tables)),
            "letterbox": _cpu_best(lambda: letterbox(image, size, native_shape=(info.rows, info.columns),
                                                     level=level)),
            "png encode": _cpu_best(lambda: Image.fromarray(boxed).save(io.BytesIO(), format="PNG",
                                                                        compress_level=_png_level())),
            "png write (atomic)": _cpu_best(lambda: atomic_write_png(Path(tmp) / "x.png", boxed,
                                                                     compress_level=_png_level())),
        }
    costs["png write (atomic)"] -= costs["png encode"]
    return {k: 1000 * v for k, v in costs.items()} | {"level": level}


def _png_level() -> int:
    from tasks.prepare.extract import PNG_COMPRESS_LEVEL

    return PNG_COMPRESS_LEVEL


def _throughput(root: Path, jobs: list[dict], tmp: Path, workers: int, repeat: int, full_1core: float) -> dict:
    from tasks.prepare.extract import balanced_shards

    paths = _paths(root, jobs)
    results: dict = {}
    with ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
        list(pool.map(_decode_shard, [([paths[0]], 224, 0)] * workers))  # warm every worker
        for size in (224, 500):
            shards = balanced_shards(jobs, max(1, len(jobs) // workers))
            path_shards = [_paths(root, shard) for shard in shards]
            wall = {"extract": float("inf"), "decode": float("inf"), "decode+edges": float("inf")}
            cpu = dict(wall)
            frames = peak = 0
            for attempt in range(repeat):
                out = tmp / f"extract-{size}-{attempt}"
                t = time.perf_counter()
                done = list(pool.map(_extract_shard, [(s, str(root), str(out), size) for s in shards]))
                wall["extract"] = min(wall["extract"], time.perf_counter() - t)
                cpu["extract"] = min(cpu["extract"], sum(d[2] for d in done))
                frames = sum(d[0] for d in done)
                peak = max(peak, max(d[1] for d in done))
                for name, edges in (("decode", 0), ("decode+edges", 1)):
                    t = time.perf_counter()
                    decoded = list(pool.map(_decode_shard, [(p, size, edges) for p in path_shards]))
                    wall[name] = min(wall[name], time.perf_counter() - t)
                    cpu[name] = min(cpu[name], sum(d[1] for d in decoded))
                    assert sum(d[0] for d in decoded) == frames, (decoded, frames)
            rate = {k: frames / v for k, v in wall.items()}
            # CPU-seconds per frame, summed over the workers: the rate all cores reach when
            # nothing else runs (the wall rates above suffer from other people's load).
            cpu_rate = {k: workers * frames / v for k, v in cpu.items()}
            results[size] = {"frames": frames, "rate": rate, "cpu_rate": cpu_rate, "peak_mib": peak,
                             "cpu_per_frame": cpu["extract"] / frames}
            print(f"\n2. extraction at {size} px, {workers} workers, {frames} frames, best of {repeat}:")
            print(f"   wall: extraction {rate['extract']:.1f} frames/s = {rate['extract'] / full_1core['wall']:.1f}x "
                  f"full-resolution decode-only of one core ({full_1core['wall']:.2f} frames/s) "
                  f"(target >= {10 if size == 224 else 4}x)")
            print(f"         reduced decode-only, same frames and workers: {rate['decode']:.1f} frames/s; "
                  f"extraction = {rate['extract'] / rate['decode']:.2f}x of it (target >= 0.9x); with the edge "
                  f"columns: {rate['decode+edges']:.1f} frames/s, {rate['extract'] / rate['decode+edges']:.2f}x")
            print(f"   CPU:  extraction {cpu_rate['extract']:.1f} frames/s on {workers} cores = "
                  f"{cpu_rate['extract'] / full_1core['cpu']:.1f}x full-resolution decode-only of one core "
                  f"({full_1core['cpu']:.2f} frames/s)")
            print(f"         reduced decode-only limit of {workers} cores: {cpu_rate['decode']:.1f} frames/s; "
                  f"extraction = {cpu_rate['extract'] / cpu_rate['decode']:.2f}x of it (target >= 0.9x); with the "
                  f"edge columns: {cpu_rate['decode+edges']:.1f} frames/s, "
                  f"{cpu_rate['extract'] / cpu_rate['decode+edges']:.2f}x")
            print(f"   peak RSS of an extraction worker: {peak:.0f} MiB (target <= 300 MiB)")
    return results


# ---------------------------------------------------------------------------- reruns


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


NOOP_FLOW = "from prefect import flow\n@flow(name='noop')\ndef noop():\n    return 1\nnoop()\n"


def _reruns(tmp: Path, repeat: int, api_url: str | None) -> dict:
    env = dict(os.environ, PREFECT_HOME=str(tmp / "prefect-home"), PYTHONPATH=str(REPO))
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    # The rerun measures fixed cost, not decoding: a small dataset with enough patients that every
    # split holds both classes (prepare stops before extraction otherwise).
    from synth.generate import generate_dataset

    root = tmp / "rerun-data"
    generate_dataset(root, patients=12, seed=1, positive_fraction=0.5, reports=False)
    prepare = [sys.executable, "-m", "flows.cli", "prepare", "--data-root", str(root), "--out", str(tmp / "flow"),
               "--strategy", "all-slices", "--image-size", "224"]
    noop = [sys.executable, "-c", NOOP_FLOW]
    first = _timed(prepare, env)
    _timed(noop, env)  # warm the Prefect home (database migrations) for both
    rerun, base = float("inf"), float("inf")
    for _ in range(repeat):
        rerun = min(rerun, _timed(prepare, env))
        base = min(base, _timed(noop, env))
    imports = {}
    for name, code in (("prefect", "import prefect"), ("prefect + flows.cli + flows.prepare",
                                                      "import prefect, flows.cli, flows.prepare")):
        imports[name] = min(_timed([sys.executable, "-c", code], env) for _ in range(repeat))
    heavy = subprocess.run([sys.executable, "-c", "import sys, flows.cli, flows.prepare, flows.train, flows.evaluate; "
                            "print(sorted(m for m in ('torch','torchvision','captum','sklearn','matplotlib','scipy') "
                            "if m in sys.modules))"], cwd=REPO, env=env, check=True, capture_output=True, text=True)
    where = f"Prefect server at {api_url}" if api_url else "temporary Prefect server"
    print(f"\n4. cached rerun ({where}, fresh CLI process each; best of {repeat}):")
    print(f"   first `tomoflow prepare --strategy all-slices --image-size 224`: {first:.1f} s")
    print(f"   cached rerun {rerun:.1f} s vs no-op flow {base:.1f} s: {rerun / base:.2f}x (target <= 1.3x)")
    print(f"   fixed costs: `import prefect` {imports['prefect']:.2f} s; with tomoflow's flow modules "
          f"{imports['prefect + flows.cli + flows.prepare']:.2f} s (tomoflow's own imports "
          f"{imports['prefect + flows.cli + flows.prepare'] - imports['prefect']:.2f} s); tomoflow's flow body "
          f"beyond a no-op flow {rerun - base:.2f} s")
    print(f"   heavy modules imported by the flow modules: {heavy.stdout.strip()} (want [])")
    return {"first": first, "rerun": rerun, "noop": base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=2)
    parser.add_argument("--frames", default="10-12")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--data", type=Path, default=None, help="reuse a full-size dataset (tomoflow synth --full-size)")
    parser.add_argument("--skip-rerun", action="store_true")
    parser.add_argument("--api-url", default=None,
                        help="measure the rerun against this running server (PREFECT_API_URL) instead of a "
                             "temporary one")
    args = parser.parse_args()
    lo, hi = (int(x) for x in args.frames.split("-"))

    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
          "(shared: ratios are within this run)")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = args.data
        if root is None:
            from synth.generate import generate_dataset

            root = tmp / "data"
            t = time.perf_counter()
            summary = generate_dataset(root, patients=args.patients, seed=0, full_size=True, frames=(lo, hi),
                                       positive_fraction=0.5, reports=False)
            print(f"dataset: {summary['volumes']} full-size volumes ({summary['rows']}x{summary['columns']}, "
                  f"{lo}-{hi} frames) generated in {time.perf_counter() - t:.0f} s")
        jobs = _jobs(root)
        paths = _paths(root, jobs)
        levels = _level_table(paths[0])

        # Full-resolution decode-only of one core: every frame of one volume (pydicom's decode).
        _init_worker()
        t = time.perf_counter()
        full_frames, full_cpu = _decode_shard(([paths[0]], None, 0))
        full_1core = {"wall": full_frames / (time.perf_counter() - t), "cpu": full_frames / full_cpu}
        results = _throughput(root, jobs, tmp, args.workers, args.repeat, full_1core)

        print("\n   per-frame CPU of each extraction step, one core (ms):")
        for size in (224, 500):
            costs = _step_costs(paths[0], size)
            level = costs.pop("level")
            total = sum(costs.values())
            parts = ", ".join(f"{k} {v:.2f}" for k, v in costs.items())
            print(f"   {size} px (level {level}): {parts}; total {total:.2f}, "
                  f"decode = {costs['decode'] / total:.0%}")

        peak = max(r["peak_mib"] for r in results.values())
        print(f"\n3. peak RSS of an extraction worker: {peak:.0f} MiB (target <= 300 MiB)")

        if not args.skip_rerun:
            _reruns(tmp, args.repeat, args.api_url)

        print("\n5. full collection projection (core-hours, from this run's CPU-seconds per frame):")
        full_s = 1 / full_1core["cpu"]
        for size in (224, 500):
            per_frame = results[size]["cpu_per_frame"]
            print(f"   {size} px: every frame ({COLLECTION_FRAMES:,}): decode at full resolution "
                  f"{COLLECTION_FRAMES * full_s / 3600:.0f} core-h, extraction with reduced decode "
                  f"{COLLECTION_FRAMES * per_frame / 3600:.1f} core-h; all-slices ({ALL_SLICES_FRAMES:,} frames): "
                  f"{ALL_SLICES_FRAMES * full_s / 3600:.1f} vs {ALL_SLICES_FRAMES * per_frame / 3600:.1f} core-h")


if __name__ == "__main__":
    main()
