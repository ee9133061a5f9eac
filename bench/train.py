"""Benchmark: the training loader against a plain PIL loader, and (CUDA) VGG16 training speed.

Writes ~1,000 synthetic letterboxed 8-bit PNGs (smooth breast-like texture, a bright blob
on positives) to a temporary folder with a manifest, then measures, in one run:

Loader (no model), images/s over whole epochs after a warm-up epoch, median of
``--repeats`` interleaved runs, at ``--workers`` workers and in the main process:

* ``plain``: the baseline an ImageFolder-style script would use: a Dataset of paths, PIL
  ``open().convert("L")``, torchvision v1 transforms on the PIL image (RandomHorizontalFlip,
  RandomVerticalFlip, RandomRotation, RandomAffine, ColorJitter, Resize, ToTensor),
  ``shuffle=True``;
* ``tomoflow``: :func:`models.training.data.make_loaders`' training loader with the same
  augmentations (:func:`models.training.augment.train_transforms`: one merged affine warp, per-sample
  seeds from :class:`models.training.data.EpochSampler`). Target: not slower than ``plain``.

GPU (only with CUDA; otherwise it says it skipped), VGG16 from scratch (speed doesn't
depend on the weights) at 224 and 500 px:

* ``real data``: :func:`models.training.engine.train_one_epoch` fed by the tomoflow loader, bf16 +
  ``channels_last``, against ``device batch``: the same loop on one batch already on the
  GPU (the loader can't be faster than that). Target: within 10 %.
* ``bf16 + channels_last`` against ``fp32`` (NCHW), both on the device batch. Target:
  >= 1.5x.

Figures on the 2-core development machine (CPU only; other jobs shared the cores, so
runs wobble by up to 1.5x; medians of 3 epochs), batch 64:

* 224 px, 2 workers: plain 680-1,090 images/s, tomoflow 1,200-1,310 (1.2-1.8x);
  in the main process: plain ~650-700, tomoflow ~850 (1.3x).
* 500 px, 2 workers: plain ~230, tomoflow ~250 (1.07x).

Where the gain comes from: one affine warp instead of rotation + affine, PIL's C kernels
for it, and uint8 batches (float32 batches through the workers' shared memory cost 1.6x
the throughput here). So a core feeds ~600-850 images/s at 224 px and ~125-250 at 500 px;
the 8 workers of a GPU node feed several thousand images/s at 224 px and 1,000+ at 500,
above what one GPU is expected to train VGG16 at (an estimate, not measured here: of the
order of 1,000-2,500 images/s at 224 px in bf16 on an A100/H100, about 5x fewer at 500).
Batched on-device augmentation was therefore not added; the GPU half of this script checks
that estimate (real data within 10 % of a batch already on the device) where CUDA is
available. ``--gpu-on-cpu`` runs that half on the CPU as a smoke test of the script.

Usage::

    .venv/bin/python bench/train.py [--images 1000] [--size 224] [--batch-size 64]
        [--workers N] [--repeats 3] [--gpu-sizes 224 500] [--gpu-steps 30] [--gpu-on-cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torchvision.transforms as T  # noqa: E402

from models.nets.classifier import build_model  # noqa: E402
from models.training.data import default_num_workers, make_loaders  # noqa: E402
from models.training.engine import batch_to_device, train_one_epoch  # noqa: E402
from tasks.core.config import AugmentConfig, ModelConfig, TrainConfig, TrainParams  # noqa: E402
from tasks.core.schema import MANIFEST_COLUMNS  # noqa: E402
from tasks.prepare.manifest import typed_frame

TARGET_LOADER_RATIO = 1.0
TARGET_REAL_VS_DEVICE = 0.9
TARGET_BF16_SPEEDUP = 1.5


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def _slice_image(rng: np.random.Generator, size: int, positive: bool) -> np.ndarray:
    """A letterboxed 8-bit slice: smooth texture in a half-ellipse, black elsewhere."""
    coarse = rng.normal(0, 1, (size // 12 + 2, size // 12 + 2))
    coarse = (coarse - coarse.min()) / np.ptp(coarse)
    texture = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
    image = 60 + 0.6 * texture.astype(np.float64) + rng.normal(0, 6, (size, size))
    r = np.arange(size)[:, None] - size / 2
    c = np.arange(size)[None, :]
    inside = (r / (0.45 * size)) ** 2 + (c / (0.8 * size)) ** 2 < 1
    if positive:
        y, x = rng.integers(size // 4, 3 * size // 4, 2)
        blob = np.exp(-(((np.arange(size)[:, None] - y) ** 2 + (c - x // 2) ** 2) / (2 * (size / 30) ** 2)))
        image += 120 * blob
    return np.clip(np.where(inside, image, 0), 0, 255).astype(np.uint8)


def write_dataset(root: Path, n: int, size: int, *, seed: int = 0) -> Path:
    """``n`` training PNGs (20 % positive) plus 16 validation PNGs, and their manifest."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n + 16):
        split = "train" if i < n else "validation"
        label = int(i % 5 == 0)
        rel = f"slices/{split}/{i:05d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_slice_image(rng, size, bool(label)), mode="L").save(root / rel)
        rows.append({"patient_id": f"P{i // 4:05d}", "study_uid": f"S{i // 4:05d}", "view": "rcc",
                     "slice_index": i, "label": label, "cohort": "cancer" if label else "normal",
                     "split": split, "image_path": rel, "source_path": f"dbt/{i // 4:05d}.dcm", "n_frames": 60,
                     "window_center": 512.0, "window_width": 600.0, "window_source": "synthetic",
                     "rotated": False, "scale": 1.0, "pad_x": 0, "pad_y": 0, "augmented_from": None})
    path = root / "manifest.parquet"
    typed_frame(rows, MANIFEST_COLUMNS).to_parquet(path, index=False)
    return path


class PlainFolder(Dataset):
    """What an ImageFolder-style script does: PIL open + convert, v1 transforms, ToTensor."""

    def __init__(self, paths: list[Path], labels: list[int], transform: Callable) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as img:
            image = img.convert("L")
        return self.transform(image), self.labels[i]


def plain_transforms(cfg: AugmentConfig, size: int) -> T.Compose:
    bilinear = T.InterpolationMode.BILINEAR
    return T.Compose([
        T.RandomHorizontalFlip(cfg.flip_p),
        T.RandomVerticalFlip(cfg.flip_p),
        T.RandomRotation(cfg.max_rotation, interpolation=bilinear),
        T.RandomAffine(0, translate=(cfg.shift, cfg.shift), scale=cfg.zoom, interpolation=bilinear),
        T.ColorJitter(brightness=cfg.brightness),
        T.Resize((size, size), antialias=True),
        T.ToTensor(),
    ])


def train_config(manifest: Path, run_dir: Path, *, size: int, batch_size: int, workers: int) -> TrainConfig:
    return TrainConfig(
        manifest=str(manifest),
        run_dir=str(run_dir),
        model=ModelConfig(model="vgg16", weights="none"),
        train=TrainParams(batch_size=batch_size, image_size=size, num_workers=workers, device="auto"),
        augment=AugmentConfig(),
    )


# --------------------------------------------------------------------------------------
# Loader benchmark
# --------------------------------------------------------------------------------------


def _epoch_rate(loader: DataLoader, set_epoch: Callable[[int], None] | None, epoch: int) -> float:
    """Images/s of one epoch, ending with float32 batches in [0, 1] on the CPU for both loaders.

    The tomoflow loader yields uint8 batches that the training loop scales on the device
    (:func:`models.training.engine.batch_to_device`); here the device is the CPU, so the scaling is
    timed too.
    """
    if set_epoch is not None:
        set_epoch(epoch)
    cpu = torch.device("cpu")
    start = time.perf_counter()
    n = 0
    for batch in loader:
        n += batch_to_device(batch[0], cpu).shape[0]
    return n / (time.perf_counter() - start)


def bench_loaders(
    manifest: Path, tmp: Path, *, size: int, batch_size: int, workers: int, repeats: int
) -> dict[str, float]:
    cfg = train_config(manifest, tmp / "run", size=size, batch_size=batch_size, workers=workers)
    ours, _, _ = make_loaders(cfg)
    paths = [manifest.parent / p for p in ours.dataset.image_paths]
    plain_ds = PlainFolder(paths, ours.dataset.labels.astype(int).tolist(), plain_transforms(cfg.augment, size))
    plain = DataLoader(plain_ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                       persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    # Warm-up: start the workers, fill the page cache.
    _epoch_rate(ours, ours.sampler.set_epoch, 0)
    _epoch_rate(plain, None, 0)
    rates: dict[str, list[float]] = {"plain": [], "tomoflow": []}
    for r in range(repeats):
        rates["plain"].append(_epoch_rate(plain, None, r + 1))
        rates["tomoflow"].append(_epoch_rate(ours, ours.sampler.set_epoch, r + 1))
    return {k: statistics.median(v) for k, v in rates.items()}


# --------------------------------------------------------------------------------------
# GPU benchmark
# --------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_rate(model, batches: Iterable, optimizer, device, *, steps: int, bf16: bool, warmup: int = 3) -> float:
    """Images/s over ``steps`` training steps, after ``warmup`` steps from the same iterator.

    One iterator for both, so the timed steps don't include refilling the loader's
    prefetch queue (which a real epoch pays once, not every 30 steps).
    """
    dtype = torch.bfloat16 if bf16 else None
    it = iter(batches)
    train_one_epoch(model, islice(it, warmup), optimizer, device, autocast_dtype=dtype, channels_last=bf16)
    _sync(device)
    start = time.perf_counter()
    result = train_one_epoch(model, islice(it, steps), optimizer, device, autocast_dtype=dtype, channels_last=bf16)
    _sync(device)
    return result["n"] / (time.perf_counter() - start)


def bench_gpu(tmp: Path, *, sizes: list[int], images: int, workers: int, steps: int, device: torch.device,
              batch_sizes: dict[int, int]) -> None:
    torch.backends.cudnn.benchmark = True
    for size in sizes:
        batch_size = batch_sizes.get(size, 32)
        data = tmp / f"gpu{size}"
        manifest = write_dataset(data, max(images, (steps + 3) * batch_size), size)
        cfg = train_config(manifest, tmp / "run", size=size, batch_size=batch_size, workers=workers)
        loader, _, _ = make_loaders(cfg)
        loader.sampler.set_epoch(0)
        x, y, rows = next(iter(loader))
        device_batch = [(x.to(device), y.to(device), rows)] * (steps + 3)

        rates = {}
        for name, bf16, batches in [
            ("real data, bf16 + channels_last", True, loader),
            ("device batch, bf16 + channels_last", True, device_batch),
            ("device batch, fp32", False, device_batch),
        ]:
            model = build_model(model="vgg16", weights=None, image_size=size, seed=0)
            model = model.to(device, memory_format=torch.channels_last) if bf16 else model.to(device)
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            rates[name] = _train_rate(model, batches, optimizer, device, steps=steps, bf16=bf16)
            del model, optimizer
            if device.type == "cuda":
                torch.cuda.empty_cache()
        real, dev, fp32 = rates.values()
        print(f"\nVGG16 training at {size} px, batch {batch_size}, {steps} steps, on {device}:")
        for name, rate in rates.items():
            print(f"  {name:38s} {rate:8.1f} images/s")
        print(f"  real data / device batch: {real / dev:.2f}  (target >= {TARGET_REAL_VS_DEVICE})"
              f"  {'OK' if real / dev >= TARGET_REAL_VS_DEVICE else 'MISSED'}")
        print(f"  bf16 + channels_last / fp32: {dev / fp32:.2f}  (target >= {TARGET_BF16_SPEEDUP})"
              f"  {'OK' if dev / fp32 >= TARGET_BF16_SPEEDUP else 'MISSED'}")


# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="training PNGs to write (default 1000)")
    parser.add_argument("--size", type=int, default=224, help="PNG and training side for the loader part")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=default_num_workers(),
                        help=f"loader workers (default min(8, CPUs) = {default_num_workers()})")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per loader (median)")
    parser.add_argument("--gpu-sizes", type=int, nargs="*", default=[224, 500])
    parser.add_argument("--gpu-steps", type=int, default=30, help="timed training steps per GPU measurement")
    parser.add_argument("--gpu-on-cpu", action="store_true",
                        help="run the model half on the CPU (a smoke test of this script, not a benchmark)")
    args = parser.parse_args(argv)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CUDA: {torch.cuda.is_available()}")
    with tempfile.TemporaryDirectory(prefix="tomoflow-bench-") as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        manifest = write_dataset(tmp / "loader", args.images, args.size)
        print(f"wrote {args.images} synthetic {args.size} px PNGs in {time.perf_counter() - start:.1f}s")
        for workers in dict.fromkeys([args.workers, 0]):
            rates = bench_loaders(manifest, tmp, size=args.size, batch_size=args.batch_size, workers=workers,
                                  repeats=args.repeats)
            ratio = rates["tomoflow"] / rates["plain"]
            print(f"\nloader only, {args.size} px, batch {args.batch_size}, {workers} workers "
                  f"(median of {args.repeats} epochs):")
            print(f"  plain PIL ImageFolder-style loader  {rates['plain']:8.1f} images/s")
            print(f"  tomoflow training loader            {rates['tomoflow']:8.1f} images/s")
            print(f"  ratio {ratio:.2f}  (target >= {TARGET_LOADER_RATIO})  "
                  f"{'OK' if ratio >= TARGET_LOADER_RATIO else 'MISSED'}")

        if torch.cuda.is_available() or args.gpu_on_cpu:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            bench_gpu(tmp, sizes=args.gpu_sizes, images=args.images, workers=args.workers, steps=args.gpu_steps,
                      device=device, batch_sizes={224: 64, 500: 32})
        else:
            print("\nGPU half skipped: CUDA is not available (VGG16 real-data vs device-batch and "
                  "bf16 + channels_last vs fp32 need a GPU)")


if __name__ == "__main__":
    main()
