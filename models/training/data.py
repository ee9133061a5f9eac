"""Training data: the manifest check, the dataset of one split, the epoch sampler, the loaders.

Reproducibility: nothing draws from a random stream that carries over
from one epoch to the next. The training order and every sample's augmentation seed come
from a generator seeded with ``(seed, epoch)`` (:class:`EpochSampler`), so epoch ``e`` reads
the same images with the same augmentation whether the run started at epoch 1 or was
resumed, and whether there are 0 or 8 loader workers.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, WeightedRandomSampler
from torchvision.transforms.v2 import functional as TF

from models.training import distributed
from models.training.manifest_audit import audit_splits, outside_images, verify_images
from models.training.engine import resolve_device
from models.training.augment import apply_seeded, derive_seed, eval_transforms, open_gray, train_transforms
from tasks.core.config import TrainConfig, TrainParams

__all__ = [
    "REQUIRED_COLUMNS",
    "EpochSampler",
    "ManifestDataset",
    "batchnorm_loader",
    "default_num_workers",
    "load_manifest",
    "make_loaders",
]

#: Manifest columns training reads.
REQUIRED_COLUMNS = ("patient_id", "label", "split", "image_path")


def _in_split(frame: pd.DataFrame, split: str) -> pd.Series:
    # A nullable string column compares to <NA> for missing splits, which .loc refuses.
    return frame["split"].eq(split).fillna(False).astype(bool)


def load_manifest(path: str | os.PathLike[str], *, check_files: bool = True) -> pd.DataFrame:
    """Read ``manifest.parquet`` and check it can train a classifier.

    Args:
        path: The manifest; image paths are relative to its folder.
        check_files: Also check that every training and validation PNG exists and opens.

    Returns:
        The manifest, index = row position in the file (reported back as ``row index``).

    Raises:
        FileNotFoundError: No manifest, or a missing PNG (named by its ``image_path``).
        ValueError: Missing columns, labels other than 0/1, no training or no validation
            rows, a split holding one class only, a patient in two splits, or a PNG that
            cannot be read (named with its row).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"manifest '{path}' does not exist; run the prepare-data flow (tomoflow prepare) first, "
            "or point TrainConfig.manifest at its manifest.parquet"
        )
    frame = pd.read_parquet(path).reset_index(drop=True)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"manifest '{path}' lacks the columns {missing} (has {list(frame.columns)}); it is not a "
            "tomoflow manifest or predates this version: rebuild it with the prepare-data flow"
        )
    bad_labels = sorted(set(frame["label"].dropna().astype(int).tolist()) - {0, 1})
    if frame["label"].isna().any() or bad_labels:
        raise ValueError(f"manifest '{path}': label must be 0 or 1 in every row, found {bad_labels or 'nulls'}")
    advice = (
        "prepare more patients, or change slices.split_fractions / slices.seed so that the training "
        "and validation splits each hold tumour and normal images"
    )
    for split in ("train", "validation"):
        labels = frame.loc[_in_split(frame, split), "label"]
        if labels.empty:
            found = sorted(frame["split"].dropna().unique().tolist())
            raise ValueError(f"manifest '{path}' has no '{split}' rows (splits found: {found}); {advice}")
        classes = sorted(set(labels.astype(int).tolist()))
        if len(classes) < 2:
            raise ValueError(
                f"manifest '{path}': the '{split}' split holds only label {classes[0]} "
                f"({len(labels)} rows); a classifier needs both classes: {advice}"
            )
    audit_splits(frame, path)
    outside = outside_images(frame, path)
    if outside:
        raise ValueError(outside)
    if check_files:
        verify_images(frame, path)
    return frame


class ManifestDataset(Dataset):
    """The images of one split of a manifest.

    Items are ``(image, label, row)``: ``image`` is ``transform`` applied to the PNG read
    with PIL in mode L (8-bit gray), or without a transform the ``(1, H, W)`` uint8 tensor
    of it; the transforms of :mod:`models.training.augment` take the PIL image (PIL's kernels are the
    fastest on the CPU) and return ``(1, S, S)`` float32 in [0, 1], or uint8 with
    ``dtype=torch.uint8`` as :func:`make_loaders` uses them; ``label`` is a float32 scalar
    (1 = tumour); ``row`` the manifest row index, for joining predictions back.

    An index may be an int, or an ``(index, seed)`` pair as :class:`EpochSampler` yields,
    in which case the transform runs with torch's CPU generator seeded to ``seed``
    (:func:`~models.training.augment.apply_seeded`), so the result doesn't depend on the worker.

    Args:
        manifest: The manifest DataFrame, or the path of ``manifest.parquet``.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        root: Folder the ``image_path`` values are relative to; default: the manifest's
            folder (required when ``manifest`` is a DataFrame).
        transform: Applied to each PIL image (mode L); ``None`` returns the uint8 tensor.
    """

    def __init__(
        self,
        manifest: pd.DataFrame | str | os.PathLike[str],
        split: str,
        root: str | os.PathLike[str] | None = None,
        transform: Callable[[Any], Tensor] | None = None,
    ) -> None:
        if isinstance(manifest, pd.DataFrame):
            if root is None:
                raise ValueError("root is required when the manifest is given as a DataFrame")
            frame = manifest
        else:
            root = Path(manifest).parent if root is None else root
            frame = pd.read_parquet(manifest)
        rows = frame.loc[_in_split(frame, split)]
        self.root = Path(root)
        self.split = split
        self.transform = transform
        # Plain lists and arrays: cheap to copy into worker processes.
        self.image_paths: list[str] = [str(p) for p in rows["image_path"]]
        self.labels: np.ndarray = rows["label"].to_numpy(dtype=np.float32)
        self.rows: np.ndarray = rows.index.to_numpy(dtype=np.int64)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Tensor, Tensor, int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        rel = self.image_paths[index]
        try:
            image = open_gray(self.root / rel)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"image_path {rel!r} (manifest row {int(self.rows[index])}, split {self.split!r}) does not "
                f"exist under '{self.root}'; rerun the prepare-data flow"
            ) from None
        if self.transform is None:
            return TF.pil_to_tensor(image), torch.tensor(self.labels[index]), int(self.rows[index])
        out = self.transform(image) if seed is None else apply_seeded(self.transform, image, seed)
        return out, torch.tensor(self.labels[index]), int(self.rows[index])


class EpochSampler(Sampler[tuple[int, int]]):
    """Training order and per-sample augmentation seeds, drawn from ``(seed, epoch)`` alone.

    Yields ``(index, sample_seed)`` pairs for :class:`ManifestDataset`. Call
    :meth:`set_epoch` before each epoch (as with ``DistributedSampler``). The epoch's
    generator is seeded afresh, so an epoch's order doesn't depend on earlier epochs: a
    resumed run replays it exactly.

    Args:
        n: Dataset length.
        seed: The run's seed.
        weights: Per-sample weights: draw ``num_samples`` with replacement through
            ``WeightedRandomSampler`` (class balancing); ``None`` shuffles without
            replacement.
        num_samples: Samples per epoch (over all replicas); default ``n``.
        num_replicas: Ranks of a data-parallel job sharing the epoch: each draws the same
            order and seeds and keeps its share (``DistributedSampler``'s, padded to a
            multiple of ``num_replicas`` so every rank takes as many steps).
        rank: This replica's share, in ``[0, num_replicas)``.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int,
        weights: Tensor | None = None,
        num_samples: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        self.n = int(n)
        self.seed = int(seed)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.num_samples = self.n if num_samples is None else int(num_samples)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and seeds :meth:`__iter__` yields (0-based)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.num_samples // self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "sampler", self.epoch))
        if self.weights is not None:
            order = list(WeightedRandomSampler(self.weights, self.num_samples, replacement=True, generator=generator))
        else:
            order = torch.randperm(self.n, generator=generator).tolist()[: self.num_samples]
        seeds = torch.randint(0, 2**62, (len(order),), generator=generator).tolist()
        pairs = list(zip(order, seeds))
        if self.num_replicas > 1:
            # DistributedSampler's share: padded by wrapping around to a multiple of the
            # replicas (every rank takes as many steps), then every num_replicas-th pair.
            share = DistributedSampler(pairs, num_replicas=self.num_replicas, rank=self.rank, shuffle=False)
            pairs = [pairs[i] for i in share]
        return iter(pairs)


def default_num_workers() -> int:
    """DataLoader workers when not configured: ``min(8, CPU count)``."""
    return min(8, os.cpu_count() or 1)



def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy's and random's
    # from it too (torch's recipe), for any library code that draws from them.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _unpadded_share(n: int, rank: int, world_size: int) -> list[int]:
    """Every ``world_size``-th index from ``rank`` on, without padding: no image counted twice
    (the first ``n % world_size`` ranks get one more)."""
    return list(range(rank, n, world_size))


def _class_balance(labels: np.ndarray, mode: str) -> tuple[float | None, Tensor | None]:
    """``(pos_weight, per-sample weights)`` of a training split for ``train.class_balance``."""
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if mode == "weights":
        return n_neg / n_pos, None
    if mode == "sampler":
        # Each class draws half the samples on average.
        return None, torch.from_numpy(np.where(labels > 0.5, 0.5 / n_pos, 0.5 / n_neg))
    return None, None


def _loader_options(params: TrainParams, batch_size: int, device: torch.device, world_size: int) -> dict[str, Any]:
    """DataLoader arguments both loaders share (one seeded generator for their workers)."""
    workers = default_num_workers() if params.num_workers is None else params.num_workers
    if world_size > 1 and params.num_workers is None:
        # The ranks on one machine share its cores.
        workers = max(1, workers // distributed.current_env().local_world_size)
    return {
        "batch_size": batch_size,
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
        "worker_init_fn": _seed_worker if workers > 0 else None,
        "generator": torch.Generator().manual_seed(derive_seed(params.seed, "workers")),
    }


def make_loaders(
    cfg: TrainConfig,
    *,
    manifest: pd.DataFrame | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[DataLoader, DataLoader, dict[str, Any]]:
    """The training and validation loaders of a configuration.

    Training: :class:`EpochSampler` (shuffled, or ``WeightedRandomSampler`` draws when
    ``class_balance="sampler"``), online augmentation (:func:`~models.training.augment.train_transforms`).
    Validation: manifest order, resize only. Both yield ``(images, labels, rows)`` with
    ``(B, 1, S, S)`` **uint8** images: :func:`batch_to_device` (which :func:`train_one_epoch`
    and :func:`evaluate` call) makes them float32 in [0, 1] on the device. Workers: ``train.num_workers`` or
    :func:`default_num_workers` (0 loads in the main process), persistent, seeded from
    ``train.seed``; pinned memory on CUDA. The last training batch is dropped only when it
    would hold a single image (BatchNorm cannot train on one 1 x 1 map).

    With ``world_size`` > 1 (one rank of a DDP job) both loaders hold this rank's share:
    batches of ``batch_size / world_size`` (:func:`~models.training.distributed.per_rank_batch_size`),
    the training order sharded by :class:`EpochSampler` (padded, so all ranks take the same
    number of steps), every ``world_size``-th validation image from ``rank`` on (not
    padded); default workers :func:`default_num_workers` divided by the ranks on this machine.

    Args:
        cfg: The configuration.
        manifest: The manifest already read by :func:`load_manifest`; default: read and
            check ``cfg.manifest``.
        rank: This process's rank in a data-parallel job.
        world_size: Processes in the job; 1 for a single process.

    Returns:
        ``(train_loader, val_loader, info)``; ``info`` holds ``n_train``, ``n_val``,
        ``n_train_pos``, ``n_train_neg``, ``n_val_pos``, ``n_val_neg``, ``pos_weight``
        (``n_neg / n_pos`` of the training split with ``class_balance="weights"``, else
        ``None``), ``class_balance``, ``num_workers``, ``device``, ``world_size`` and
        ``batch_size_per_rank``. Counts are of the whole splits. Call
        ``train_loader.sampler.set_epoch(epoch)`` before each epoch.

    Raises:
        ValueError: ``batch_size`` not a multiple of ``world_size``.
    """
    params = cfg.train
    batch_size = distributed.per_rank_batch_size(params.batch_size, world_size)
    manifest_path = Path(cfg.manifest)
    frame = load_manifest(manifest_path) if manifest is None else manifest
    root = manifest_path.parent
    device = resolve_device(params.device)
    # uint8 batches, scaled to float on the device (batch_to_device).
    size = params.image_size
    train_ds = ManifestDataset(frame, "train", root, train_transforms(cfg.augment, size, dtype=torch.uint8))
    val_ds = ManifestDataset(frame, "validation", root, eval_transforms(size, dtype=torch.uint8))

    n_pos = int(train_ds.labels.sum())
    n_neg = len(train_ds) - n_pos
    pos_weight, weights = _class_balance(train_ds.labels, params.class_balance)
    sampler = EpochSampler(len(train_ds), seed=params.seed, weights=weights, num_replicas=world_size, rank=rank)
    common = _loader_options(params, batch_size, device, world_size)
    workers = common["num_workers"]
    train_loader = DataLoader(train_ds, sampler=sampler, drop_last=len(sampler) % batch_size == 1, **common)
    if world_size > 1:
        val_loader = DataLoader(val_ds, sampler=_unpadded_share(len(val_ds), rank, world_size), **common)
    else:
        val_loader = DataLoader(val_ds, shuffle=False, **common)
    info = {
        "n_train": len(train_ds),
        "n_val": len(val_ds),
        "n_train_pos": n_pos,
        "n_train_neg": n_neg,
        "n_val_pos": int(val_ds.labels.sum()),
        "n_val_neg": len(val_ds) - int(val_ds.labels.sum()),
        "pos_weight": pos_weight,
        "class_balance": params.class_balance,
        "num_workers": workers,
        "device": str(device),
        "world_size": world_size,
        "batch_size_per_rank": batch_size,
    }
    return train_loader, val_loader, info


def batchnorm_loader(cfg: TrainConfig, frame: pd.DataFrame, rank: int, world_size: int) -> DataLoader:
    """The training images without augmentation, in manifest order (this rank's share), for
    :func:`~models.training.engine.recalibrate_batchnorm`; loaded in this process (a few small PNGs per epoch)."""
    params = cfg.train
    dataset = ManifestDataset(frame, "train", Path(cfg.manifest).parent,
                              eval_transforms(params.image_size, dtype=torch.uint8))
    batch_size = distributed.per_rank_batch_size(params.batch_size, world_size)
    indices = _unpadded_share(len(dataset), rank, world_size) if world_size > 1 else None
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, shuffle=False, num_workers=0)

