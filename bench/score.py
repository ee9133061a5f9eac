"""Benchmark: ``tomoflow score``'s frames per second against the model's forward pass alone.

Writes one full-size BCS-DBT-like JPEG 2000 volume (2457 x 1890, 10-bit, the texture of
``bench/decode.py``), builds the study's network (VGG16-BN, untrained: speed does not depend on
the weights) and measures in this one process:

* ``forward only``: the model on random ``(batch, 1, S, S)`` tensors, as many frames as the volume;
* ``score``: :func:`tasks.score.frames.score_volumes` on the volume: every frame decoded at the
  reduced JPEG 2000 level the input size needs, on worker processes, while the model runs.

The ratio ``score / forward-only`` (target >= 0.8 on the CPU) says how much of the model's speed
the reading costs; seconds per volume are given for this volume and for the collection's typical
70 frames, and with ``--device cuda`` the estimate for the whole collection (22,032 volumes).
Usage::

    .venv/bin/python bench/score.py [--frames 16] [--image-size 224] [--workers N] [--device cuda --autocast]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.8
COLLECTION_VOLUMES = 22_032
TYPICAL_FRAMES = 70


def _volume_maker():
    spec = importlib.util.spec_from_file_location("bench_decode", ROOT / "bench" / "decode.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module._volume


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--frames", type=int, default=16, help="frames in the volume (default 16)")
    add("--rows", type=int, default=2457)
    add("--columns", type=int, default=1890)
    add("--image-size", type=int, default=224, help="network input and PNG size (default 224)")
    add("--batch-size", type=int, default=8)
    add("--workers", type=int, default=None, help="decode workers (default: cores - 1, at most 4)")
    add("--model", default="vgg16_bn")
    add("--device", default="cpu", choices=["cpu", "cuda"])
    add("--autocast", action="store_true", help="bf16 autocast (CUDA)")
    add("--repeat", type=int, default=1, help="score the volume this many times per measurement")
    add("--rounds", type=int, default=3, help="interleaved forward-only / score measurements (medians)")
    add("--volume", type=Path, default=None, help="reuse (or write) the volume here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))

    import torch

    from models.nets.classifier import build_model
    from models.nets.heads import logits_of
    from tasks.score.frames import VolumeJob, default_workers, frames_of, score_volumes

    workers = default_workers() if args.workers is None else args.workers
    device = torch.device(args.device)
    model = build_model(model=args.model, weights=None).to(device).eval()
    size, batch = args.image_size, args.batch_size
    with tempfile.TemporaryDirectory(prefix="tomoflow-bench-score-") as tmp:
        path = args.volume or Path(tmp) / "volume.dcm"
        if not path.exists():
            from synth.dicom_writer import write_dbt_dicom

            start = time.perf_counter()
            write_dbt_dicom(path, _volume_maker()(args.frames, args.rows, args.columns, 0), patient_id="DBT-BENCH",
                            study_uid="DBT-SBENCH", view="rcc", window_center=600, window_width=700)
            print(f"wrote {path}: {args.frames} x {args.rows} x {args.columns} JPEG 2000 in "
                  f"{time.perf_counter() - start:.1f} s")
        frames = frames_of(args.frames, 1) * 1
        jobs = [VolumeJob(key=i, path=str(path), view="rcc", frames=frames) for i in range(args.repeat)]
        n = len(frames) * args.repeat

        def forward_only() -> float:
            x = torch.rand(batch, 1, size, size, device=device)
            done, start = 0, time.perf_counter()
            with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                                        enabled=args.autocast):
                while done < n:
                    logits_of(model(x[: min(batch, n - done)])).float().cpu()
                    done += min(batch, n - done)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return n / (time.perf_counter() - start)

        def score() -> float:
            start = time.perf_counter()
            results = list(score_volumes(model, jobs, png_size=size, input_size=size, batch_size=batch,
                                         device=device, workers=workers, autocast=args.autocast))
            errors = [r.error for r in results if r.error]
            if errors:
                raise SystemExit(f"score failed: {errors[0]}")
            return n / (time.perf_counter() - start)

        forward_only()  # warm-up (allocator, cuDNN / oneDNN kernels)
        forwards, scores = [], []
        for _ in range(args.rounds):  # interleaved, so a drifting load weighs on both alike
            forwards.append(forward_only())
            scores.append(score())
        forwards.append(forward_only())
    base, scored = statistics.median(forwards), statistics.median(scores)
    ratio = scored / base
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {os.cpu_count()} CPUs, device {device}"
          f"{' (bf16 autocast)' if args.autocast else ''}, {args.model} at {size} px, batch {batch}, "
          f"{workers} decode worker(s)")
    print(f"forward only (random tensors): median {base:.2f} frames/s ({', '.join(f'{v:.2f}' for v in forwards)})")
    print(f"score (decode + model):         median {scored:.2f} frames/s ({', '.join(f'{v:.2f}' for v in scores)})")
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print(f"score / forward-only: {ratio:.3f} (target >= {TARGET_RATIO}): {verdict}")
    print(f"seconds per full-size volume at {size} px: {args.frames / scored:.1f} s for {args.frames} frames, "
          f"{TYPICAL_FRAMES / scored:.1f} s for {TYPICAL_FRAMES} frames")
    hours = COLLECTION_VOLUMES * TYPICAL_FRAMES / scored / 3600
    print(f"whole collection ({COLLECTION_VOLUMES:,} volumes x {TYPICAL_FRAMES} frames): {hours:.1f} h at this rate")


if __name__ == "__main__":
    main()
