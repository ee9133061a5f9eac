"""Training: data loading, one epoch, evaluation, the fine-tuning schedule, checkpoints, resume.

Split by phase like torchvision's ``references/classification/train.py``:

* :func:`load_manifest` / :class:`ManifestDataset` / :func:`make_loaders`: the data;
* :func:`build_optimizer` / :func:`apply_schedule`: two parameter groups (head, backbone)
  and the freeze-then-fine-tune schedule;
* :func:`train_one_epoch` / :func:`evaluate`: one pass each, returning loss and accuracy;
* :func:`fit`: the run: checkpoints, history, early stopping and resume.

Reproducibility (DESIGN convention 9). Nothing draws from a random stream that carries
over from one epoch to the next: the training order and every sample's augmentation seed
come from a generator seeded with ``(seed, epoch)`` (:class:`EpochSampler`), and torch's
global generator, which dropout uses, is reseeded from ``(seed, epoch)`` at the start of
each epoch. So epoch ``e`` computes the same thing whether the run started at epoch 1 or
was resumed from ``last.pt`` after a kill, and whether there are 0 or 8 loader workers.
On the CPU the same seed gives the same history to the last bit; on CUDA (bf16 autocast,
``channels_last``, cuDNN autotuning) results agree to rounding.

Run folder (``cfg.run_dir``):

* ``last.pt``: written atomically after every epoch: ``model`` (state_dict),
  ``model_config`` (the :func:`~models.build_model` arguments), ``optimizer``,
  ``scheduler`` (``None``: the study uses none), ``epoch`` (completed epochs), ``config``
  (``TrainConfig.model_dump(mode="json")``), ``history``, ``best_val_loss``,
  ``best_epoch``, ``epochs_without_improvement``, ``stopped_early``, ``rng`` and
  ``manifest_fingerprint``. Loads with ``torch.load(..., weights_only=True)``.
* ``best.pt``: the model with the lowest validation loss so far (``model``,
  ``model_config``, ``config``, ``epoch``, ``val_loss``, ``val_accuracy``); see
  :func:`load_classifier`.
* ``history.csv``: one row per epoch (:data:`HISTORY_COLUMNS`), rewritten atomically.
* ``config.json``: the configuration of the latest invocation.

No file is named like ``name-<hex>.pth``: the weights loader would hash-check it.

Several GPUs. Launched by ``torchrun`` (``WORLD_SIZE`` > 1), :func:`fit` trains with
DistributedDataParallel, one process per GPU: ``train.batch_size`` stays the global batch,
each epoch's ``(seed, epoch)`` order is sharded over the ranks, metrics are summed over
them, and only rank 0 writes the run folder; see :mod:`models.distributed`. The entry
point for ``torchrun`` is :func:`main`::

    torchrun --standalone --nproc_per_node=4 -m models.train --config RUN/config.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler
from torchvision.transforms.v2 import functional as TF

from models import distributed
from models.backbones import TumorClassifier, build_model, resolve_weights
from models.heads import classification_loss, logits_of
from tasks.augment import apply_seeded, derive_seed, eval_transforms, open_gray, train_transforms
from tasks.config import TrainConfig, TrainParams
from tasks.io import atomic_write, atomic_write_json, atomic_write_text, file_fingerprint

__all__ = [
    "BEST_NAME",
    "CONFIG_NAME",
    "HISTORY_COLUMNS",
    "HISTORY_NAME",
    "LAST_NAME",
    "REQUIRED_COLUMNS",
    "RESUME_IGNORED_FIELDS",
    "EpochSampler",
    "ManifestDataset",
    "apply_schedule",
    "backbone_lr",
    "batch_to_device",
    "build_optimizer",
    "config_differences",
    "default_num_workers",
    "evaluate",
    "fit",
    "load_classifier",
    "load_manifest",
    "main",
    "make_loaders",
    "recalibrate_batchnorm",
    "resolve_device",
    "train_one_epoch",
]

log = logging.getLogger(__name__)

LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
HISTORY_NAME = "history.csv"
CONFIG_NAME = "config.json"
_FORMAT = "tomoflow-train/1"

#: Columns of ``history.csv``; ``lr`` is the head's, ``backbone_lr`` the backbone group's.
HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "backbone_lr",
    "seconds",
]

#: Manifest columns training reads.
REQUIRED_COLUMNS = ("patient_id", "label", "split", "image_path")

#: ``TrainConfig`` fields (dotted) that don't change what a run computes, so a run may be
#: resumed with different values: where it runs, how many loader workers, how many epochs
#: in all (no schedule depends on it; raising it extends a finished run), where the run
#: folder is, and the manifest's path (its *content* is checked by fingerprint instead).
RESUME_IGNORED_FIELDS = frozenset({"run_dir", "manifest", "train.device", "train.num_workers", "train.epochs",
                                   "train.multi_gpu"})

ProgressFn = Callable[[int, dict[str, Any]], None]
BatchHook = Callable[[int, int], None]


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def _in_split(frame: pd.DataFrame, split: str) -> pd.Series:
    # A nullable string column compares to <NA> for missing splits, which .loc refuses.
    return frame["split"].eq(split).fillna(False).astype(bool)


def load_manifest(path: str | os.PathLike[str], *, check_files: bool = True) -> pd.DataFrame:
    """Read ``manifest.parquet`` and check it can train a classifier.

    Args:
        path: The manifest; image paths are relative to its folder.
        check_files: Also check that every training and validation PNG exists.

    Returns:
        The manifest, index = row position in the file (reported back as ``row index``).

    Raises:
        FileNotFoundError: No manifest, or a missing PNG (named by its ``image_path``).
        ValueError: Missing columns, labels other than 0/1, no training or no validation
            rows, or a split holding one class only.
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
    if check_files:
        root = path.parent
        used = frame.loc[frame["split"].isin(["train", "validation"]), "image_path"]
        absent = [p for p in used if not (root / p).is_file()]
        if absent:
            raise FileNotFoundError(
                f"manifest '{path}': {len(absent)} image file(s) are missing under '{root}', first "
                f"image_path {absent[0]!r}; rerun the prepare-data flow (and offline balancing, if used)"
            )
    return frame


class ManifestDataset(Dataset):
    """The images of one split of a manifest.

    Items are ``(image, label, row)``: ``image`` is ``transform`` applied to the PNG read
    with PIL in mode L (8-bit gray), or without a transform the ``(1, H, W)`` uint8 tensor
    of it; the transforms of :mod:`tasks.augment` take the PIL image (PIL's kernels are the
    fastest on the CPU) and return ``(1, S, S)`` float32 in [0, 1], or uint8 with
    ``dtype=torch.uint8`` as :func:`make_loaders` uses them; ``label`` is a float32 scalar
    (1 = tumour); ``row`` the manifest row index, for joining predictions back.

    An index may be an int, or an ``(index, seed)`` pair as :class:`EpochSampler` yields,
    in which case the transform runs with torch's CPU generator seeded to ``seed``
    (:func:`~tasks.augment.apply_seeded`), so the result doesn't depend on the worker.

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
            order and seeds and keeps its share (:func:`~models.distributed.shard`, padded
            to a multiple of ``num_replicas`` so every rank takes as many steps).
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
            pairs = distributed.shard(pairs, self.rank, self.num_replicas, pad=True)
        return iter(pairs)


def default_num_workers() -> int:
    """DataLoader workers when not configured: ``min(8, CPU count)``."""
    return min(8, os.cpu_count() or 1)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without CUDA is an error.

    Raises:
        ValueError: Unknown name, or ``"cuda"`` asked for on a machine without CUDA.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "train.device is 'cuda' but CUDA is not available on this machine (torch "
            f"{torch.__version__}); use 'auto' or 'cpu', or run on the GPU work pool"
        )
    if name not in ("cpu", "cuda"):
        raise ValueError(f"train.device {name!r} is not one of the allowed values ['auto', 'cpu', 'cuda']")
    return torch.device(name)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy's and random's
    # from it too (torch's recipe), for any library code that draws from them.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loaders(
    cfg: TrainConfig,
    *,
    manifest: pd.DataFrame | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[DataLoader, DataLoader, dict[str, Any]]:
    """The training and validation loaders of a configuration.

    Training: :class:`EpochSampler` (shuffled, or ``WeightedRandomSampler`` draws when
    ``class_balance="sampler"``), online augmentation (:func:`~tasks.augment.train_transforms`).
    Validation: manifest order, resize only. Both yield ``(images, labels, rows)`` with
    ``(B, 1, S, S)`` **uint8** images: :func:`batch_to_device` (which :func:`train_one_epoch`
    and :func:`evaluate` call) makes them float32 in [0, 1] on the device. Workers: ``train.num_workers`` or
    :func:`default_num_workers` (0 loads in the main process), persistent, seeded from
    ``train.seed``; pinned memory on CUDA. The last training batch is dropped only when it
    would hold a single image (BatchNorm cannot train on one 1 x 1 map).

    With ``world_size`` > 1 (one rank of a DDP job) both loaders hold this rank's share:
    batches of ``batch_size / world_size`` (:func:`~models.distributed.per_rank_batch_size`),
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
    pos_weight: float | None = None
    weights = None
    if params.class_balance == "weights":
        pos_weight = n_neg / n_pos
    elif params.class_balance == "sampler":
        # Each class draws half the samples on average.
        per_class = np.where(train_ds.labels > 0.5, 0.5 / n_pos, 0.5 / n_neg)
        weights = torch.from_numpy(per_class)
    sampler = EpochSampler(len(train_ds), seed=params.seed, weights=weights, num_replicas=world_size, rank=rank)

    workers = default_num_workers() if params.num_workers is None else params.num_workers
    if world_size > 1 and params.num_workers is None:
        # The ranks on one machine share its cores.
        workers = max(1, workers // distributed.current_env().local_world_size)
    common: dict[str, Any] = {
        "batch_size": batch_size,
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
        "worker_init_fn": _seed_worker if workers > 0 else None,
        "generator": torch.Generator().manual_seed(derive_seed(params.seed, "workers")),
    }
    train_loader = DataLoader(
        train_ds, sampler=sampler, drop_last=len(sampler) % batch_size == 1, **common
    )
    if world_size > 1:
        val_loader = DataLoader(val_ds, sampler=distributed.shard(range(len(val_ds)), rank, world_size, pad=False),
                                **common)
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


def _batchnorm_loader(cfg: TrainConfig, frame: pd.DataFrame, rank: int, world_size: int) -> DataLoader:
    """The training images without augmentation, in manifest order (this rank's share), for
    :func:`recalibrate_batchnorm`; loaded in this process (a few small PNGs per epoch)."""
    params = cfg.train
    dataset = ManifestDataset(frame, "train", Path(cfg.manifest).parent,
                              eval_transforms(params.image_size, dtype=torch.uint8))
    batch_size = distributed.per_rank_batch_size(params.batch_size, world_size)
    indices = distributed.shard(range(len(dataset)), rank, world_size, pad=False) if world_size > 1 else None
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, shuffle=False, num_workers=0)


# --------------------------------------------------------------------------------------
# Optimiser and fine-tuning schedule
# --------------------------------------------------------------------------------------


def build_optimizer(model: TumorClassifier, params: TrainParams) -> torch.optim.Optimizer:
    """SGD with momentum or Adam over two groups: 0 = head (and aux head), 1 = backbone.

    Both groups exist from the start, whatever the schedule, so the optimiser's state dict
    has the same shape in every epoch and a checkpoint taken while frozen resumes after
    unfreezing. :func:`apply_schedule` sets each group's learning rate per epoch.
    """
    groups = [
        {"params": model.head_parameters(), "lr": params.lr, "name": "head"},
        {"params": model.backbone_parameters(), "lr": backbone_lr(params, 0), "name": "backbone"},
    ]
    if params.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum)
    if params.optimizer == "adam":
        return torch.optim.Adam(groups, lr=params.lr)
    raise ValueError(f"train.optimizer {params.optimizer!r} is not one of the allowed values ['sgd', 'adam']")


def backbone_lr(params: TrainParams, epoch: int) -> float:
    """The backbone group's learning rate in ``epoch`` (0-based).

    ``0`` while frozen (``epoch < freeze_epochs``), ``lr * unfreeze_lr_factor`` once
    unfrozen after a frozen phase. With ``freeze_epochs=0`` there is no two-phase schedule
    and the whole network trains at ``lr``, as in the study. Either rate is multiplied by
    ``backbone_lr_factor`` (1 by default; about 10 for a batch-normalised backbone trained
    from scratch, which takes a higher rate than the new head).
    """
    if epoch < params.freeze_epochs:
        return 0.0
    rate = params.lr * params.unfreeze_lr_factor if params.freeze_epochs > 0 else params.lr
    return rate * params.backbone_lr_factor


def apply_schedule(model: TumorClassifier, optimizer: torch.optim.Optimizer, params: TrainParams, epoch: int) -> None:
    """Freeze or unfreeze the backbone and set both groups' learning rates for ``epoch`` (0-based)."""
    model.set_backbone_trainable(epoch >= params.freeze_epochs)
    optimizer.param_groups[0]["lr"] = params.lr
    optimizer.param_groups[1]["lr"] = backbone_lr(params, epoch)


# --------------------------------------------------------------------------------------
# One epoch
# --------------------------------------------------------------------------------------


def _precision(device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype, channels_last) for a device: bf16 + NHWC on CUDA, fp32 on the CPU."""
    if device.type == "cuda":
        return torch.bfloat16, True
    return None, False


def batch_to_device(x: Tensor, device: torch.device, *, channels_last: bool = False) -> Tensor:
    """Move a batch of images to ``device`` as float32 in [0, 1], the model's input.

    The loaders of :func:`make_loaders` yield uint8 batches (a quarter of the bytes through
    worker shared memory, pinned memory and the host-to-device copy); they are scaled here,
    on the device, with torchvision's ``to_dtype`` (the same floats as ``ToDtype`` in a
    worker). Float batches pass through unchanged.

    Args:
        x: ``(B, 1, H, W)`` uint8 or float images.
        device: Target device.
        channels_last: Return NHWC memory format (CUDA with a ``channels_last`` model).
    """
    x = x.to(device, non_blocking=True)
    if not x.is_floating_point():
        x = TF.to_dtype(x, torch.float32, scale=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _to_device(x: Tensor, y: Tensor, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    return batch_to_device(x, device, channels_last=channels_last), y.to(device, non_blocking=True)


def _correct(logits: Tensor, y: Tensor) -> Tensor:
    # sigmoid(z) >= 0.5  <=>  z >= 0
    return ((logits.detach().float() >= 0) == (y >= 0.5)).sum()


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    pos_weight: float | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    max_batches: int | None = None,
    aux_weight: float = 0.4,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Train for one pass over ``loader``.

    The loss is :func:`~models.heads.classification_loss`: BCE on the logits, plus
    ``aux_weight`` x the auxiliary loss when the model returns Inception's auxiliary
    logits. bf16 autocast needs no gradient scaler.

    Args:
        model: The classifier, on ``device``.
        loader: Yields ``(images, labels, rows)``; images uint8 or float in [0, 1] (see
            :func:`batch_to_device`).
        optimizer: Its optimiser.
        device: Where to compute.
        pos_weight: BCE weight of positives (class balancing), or ``None``.
        autocast_dtype: ``torch.bfloat16`` for mixed precision (CUDA), ``None`` for fp32.
        channels_last: Feed NHWC batches (use with a ``channels_last`` model on CUDA).
        max_batches: Stop after this many batches.
        aux_weight: Weight of Inception's auxiliary loss.
        on_batch: Called with the batch index after each optimiser step (progress, tests).

    Returns:
        ``{"loss", "accuracy", "n"}``: mean loss per image, accuracy at sigmoid >= 0.5
        (training mode: dropout on, augmented images), images seen.
    """
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for batch, (x, y, _) in enumerate(loader):
        if max_batches is not None and batch >= max_batches:
            break
        x, y = _to_device(x, y, device, channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            output = model(x)
            loss = classification_loss(output, y, aux_weight=aux_weight, pos_weight=pos_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulated on the device: no host sync per batch.
        total += loss.detach().double() * y.numel()
        correct += _correct(logits_of(output), y)
        seen += y.numel()
        if on_batch is not None:
            on_batch(batch)
    if seen == 0:
        raise ValueError("the training loader yielded no batch")
    return {"loss": float(total) / seen, "accuracy": float(correct) / seen, "n": seen}


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    pos_weight: float | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    max_batches: int | None = None,
) -> dict[str, float]:
    """Loss and accuracy of ``model`` on ``loader`` in eval mode (main logits only).

    ``pos_weight`` should be the training one, so the validation loss measures the
    objective being optimised (early stopping and ``best.pt`` compare it).

    Returns:
        ``{"loss", "accuracy", "n"}``.
    """
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for batch, (x, y, _) in enumerate(loader):
        if max_batches is not None and batch >= max_batches:
            break
        x, y = _to_device(x, y, device, channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = logits_of(model(x))
        loss = classification_loss(logits.float(), y, pos_weight=pos_weight)
        total += loss.double() * y.numel()
        correct += _correct(logits, y)
        seen += y.numel()
    if seen == 0:
        raise ValueError("the validation loader yielded no batch")
    return {"loss": float(total) / seen, "accuracy": float(correct) / seen, "n": seen}


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    max_batches: int | None = None,
) -> int:
    """Re-estimate the BatchNorm running statistics with the current weights ("precise BN").

    BatchNorm normalises each training batch by its own statistics but evaluates with
    running averages (momentum 0.1 per step). A network trained from scratch changes its
    activations' scale much faster than those averages follow: with a handful of steps per
    epoch its validation outputs come from statistics dozens of steps old, and it looks like
    chance for epochs after it has learned (measured on the demo: learned by step 9, validated
    at chance until step 27). One pass over the training images in training mode, with the
    running statistics reset and averaged equally over the pass (``momentum=None``), gives
    the statistics of the weights being validated. Nothing else changes: no gradients, and
    layers kept in eval mode by a frozen backbone are left alone.

    Args:
        model: The classifier (or any module), on ``device``.
        loader: Training images ``(images, labels, rows)``, without augmentation.
        device: Where to compute.
        autocast_dtype: As in :func:`train_one_epoch`.
        channels_last: As in :func:`train_one_epoch`.
        max_batches: Use at most this many batches.

    Returns:
        The number of BatchNorm layers recalibrated (0 for a network without BatchNorm,
        such as the study's VGG16, which is then left untouched).
    """
    was_training = model.training
    model.train()  # a frozen backbone's BatchNorm layers stay in eval mode (TumorClassifier.train)
    layers = [m for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    if not layers:
        model.train(was_training)
        return 0
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over this pass
    try:
        for batch, (x, _y, _) in enumerate(loader):
            if max_batches is not None and batch >= max_batches:
                break
            x = batch_to_device(x, device, channels_last=channels_last)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                model(x)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(layers)


# --------------------------------------------------------------------------------------
# Checkpoints and resume
# --------------------------------------------------------------------------------------


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename (no half-written file)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def config_differences(saved: Mapping[str, Any], current: TrainConfig) -> list[str]:
    """Dotted names of the fields that differ and matter (not in :data:`RESUME_IGNORED_FIELDS`).

    Args:
        saved: A checkpoint's ``config`` (``TrainConfig.model_dump(mode="json")``).
        current: The configuration to compare.
    """
    old, new = _flatten(saved), _flatten(current.model_dump(mode="json"))
    missing = object()
    return sorted(
        k
        for k in old.keys() | new.keys()
        if k not in RESUME_IGNORED_FIELDS and old.get(k, missing) != new.get(k, missing)
    )


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def load_classifier(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> TumorClassifier:
    """Rebuild the classifier saved in ``best.pt`` or ``last.pt``, in eval mode.

    Args:
        path: A checkpoint written by :func:`fit`.
        device: Where to put the model.

    Raises:
        ValueError: The file isn't a tomoflow training checkpoint.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, Mapping) or "model" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"'{path}' is not a tomoflow training checkpoint (no 'model' and 'model_config')")
    model = build_model(**ckpt["model_config"], weights=None)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def _history_csv(history: list[dict[str, Any]]) -> str:
    return pd.DataFrame(history, columns=HISTORY_COLUMNS).to_csv(index=False)


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def fit(
    cfg: TrainConfig,
    *,
    progress: ProgressFn | None = None,
    on_batch: BatchHook | None = None,
) -> dict[str, Any]:
    """Train a classifier as configured, resuming from ``run_dir/last.pt`` when it's there.

    Order of checks, so a bad configuration fails before any work: the weights
    (:func:`~models.resolve_weights`: an offline machine without the ImageNet file fails
    here), the device, a resumable ``last.pt`` (same configuration, ignoring
    :data:`RESUME_IGNORED_FIELDS`, and the same manifest content), then the manifest
    (:func:`load_manifest`). Then, per epoch ``e`` (0-based): freeze or unfreeze
    (:func:`apply_schedule`), train, re-estimate the BatchNorm statistics when
    ``train.recalibrate_bn`` is on (:func:`recalibrate_batchnorm`), evaluate, append to
    the history, write ``best.pt`` if the validation loss improved, rewrite
    ``history.csv``, write ``last.pt`` (the commit
    point: a kill before it repeats epoch ``e`` on resume, bit for bit on the CPU), log,
    and call ``progress``. Early stopping ends the run after ``patience`` epochs without a
    lower validation loss.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs ``fit`` with the same
    configuration: it joins the process group (NCCL on ``cuda:LOCAL_RANK``, gloo on the
    CPU), trains the model in DistributedDataParallel on its share of each epoch's order
    and of the validation split (``train.batch_size`` is the global batch and must be a
    multiple of ``WORLD_SIZE``), sums the metrics over all ranks so every rank computes the
    same history row and early-stopping decision, and leaves the process group at the end.
    Only rank 0 writes the run folder and calls ``progress``; ``on_batch`` is called on
    every rank. See :mod:`models.distributed`. Without ``torchrun`` nothing of this happens.

    Args:
        cfg: The configuration.
        progress: Called after each epoch with ``(epoch, row)``, ``epoch`` 1-based and
            ``row`` the history row plus ``epochs``, ``best_val_loss``, ``best_epoch`` and
            ``stopped_early`` (for a Prefect progress artifact or a progress bar).
        on_batch: Called with ``(epoch, batch)`` (1-based epoch, 0-based batch) after each
            training step.

    Returns:
        ``best``, ``last``, ``history``, ``config`` (paths as str; ``best`` is ``None`` if
        no epoch produced a finite validation loss), ``epochs_run`` (epochs in the
        history), ``best_epoch``, ``best_val_loss``, ``stopped_early``, ``device``,
        ``resumed_from`` (completed epochs found in ``last.pt``, 0 for a fresh run),
        ``world_size`` (processes that trained, 1 without ``torchrun``).

    Raises:
        WeightsNotFoundError, FileNotFoundError: Weights, manifest or PNGs missing.
        ValueError: Bad device, a ``last.pt`` with another configuration or manifest
            (the message names the fields), a manifest that can't train a classifier, or
            (under ``torchrun``) a batch size that doesn't split over the processes.
    """
    resolve_weights(cfg.model.model, cfg.model.weights)
    device = resolve_device(cfg.train.device)
    env = distributed.current_env()
    if env.enabled:
        distributed.per_rank_batch_size(cfg.train.batch_size, env.world_size)
        device = distributed.device_for(env, device)
    with distributed.process_group(env, device) as group:
        return _fit(cfg, device, group, progress=progress, on_batch=on_batch)


def _fit(
    cfg: TrainConfig,
    device: torch.device,
    group: distributed.Group,
    *,
    progress: ProgressFn | None,
    on_batch: BatchHook | None,
) -> dict[str, Any]:
    """:func:`fit` once the device and the process group (if any) are settled."""
    params = cfg.train
    run_dir = Path(cfg.run_dir)
    last_path, best_path = run_dir / LAST_NAME, run_dir / BEST_NAME
    history_path, config_path = run_dir / HISTORY_NAME, run_dir / CONFIG_NAME
    manifest_path = Path(cfg.manifest)
    # Every rank computes the same; one of them says so.
    say = log.info if group.is_writer else log.debug

    state: dict[str, Any] | None = None
    if last_path.is_file():
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping) or state.get("format") != _FORMAT:
            raise ValueError(
                f"'{last_path}' is not a tomoflow training checkpoint of format {_FORMAT!r}; "
                "use a new run_dir or delete the file"
            )
        differing = config_differences(state["config"], cfg)
        if differing:
            old, new = _flatten(state["config"]), _flatten(cfg.model_dump(mode="json"))
            details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differing)
            raise ValueError(
                f"run_dir '{run_dir}' holds a run ('{last_path}') with another configuration; differing "
                f"fields: {details}. Use a new run_dir for a new configuration (or delete '{last_path}' "
                "to start this one over)"
            )

    frame = load_manifest(manifest_path)
    fingerprint = file_fingerprint(manifest_path, content=True)
    if state is not None and state.get("manifest_fingerprint") != fingerprint:
        raise ValueError(
            f"run_dir '{run_dir}' holds a run trained on other manifest content than '{manifest_path}' "
            "(differing field: manifest content); use a new run_dir for the new manifest"
        )

    history: list[dict[str, Any]] = [] if state is None else [dict(r) for r in state["history"]]
    # Images trained and validated on per epoch (over all ranks); not in history.csv.
    samples: list[dict[str, Any]] = [] if state is None else [dict(r) for r in state.get("samples", [])]
    start = 0 if state is None else int(state["epoch"])
    best_val = math.inf if state is None else float(state["best_val_loss"])
    best_epoch: int | None = None if state is None else state["best_epoch"]
    bad_epochs = 0 if state is None else int(state["epochs_without_improvement"])
    stopped = False if state is None else bool(state["stopped_early"])

    def summary() -> dict[str, Any]:
        return {
            "best": str(best_path) if best_epoch is not None else None,
            "last": str(last_path),
            "history": str(history_path),
            "config": str(config_path),
            "epochs_run": len(history),
            "best_epoch": best_epoch,
            "best_val_loss": best_val if best_epoch is not None else None,
            "stopped_early": stopped,
            "device": str(device),
            "resumed_from": start,
            "world_size": group.world_size,
        }

    if group.is_writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(config_path, cfg.model_dump(mode="json"))
    if stopped or start >= params.epochs:
        say(
            "run in '%s' is already complete (%d epochs%s); nothing to do",
            run_dir, start, ", stopped early" if stopped else "",
        )
        return summary()

    train_loader, val_loader, info = make_loaders(cfg, manifest=frame, rank=group.rank, world_size=group.world_size)
    stats_loader = _batchnorm_loader(cfg, frame, group.rank, group.world_size) if params.recalibrate_bn else None
    say(
        "training %s (%s weights, %s head) on %s: %d training images (%d tumour, %d normal), %d validation "
        "images; class balance %s%s; %d loader workers; %s",
        cfg.model.model, cfg.model.weights, cfg.model.head,
        device if group.world_size == 1 else
        f"{group.world_size} processes ({device.type}, {info['batch_size_per_rank']} images per process and step)",
        info["n_train"], info["n_train_pos"],
        info["n_train_neg"], info["n_val"], info["class_balance"],
        f" (pos_weight {info['pos_weight']:.3g})" if info["pos_weight"] is not None else "",
        info["num_workers"], f"resuming after epoch {start}" if state is not None else "fresh run",
    )

    if state is None and cfg.model.model == "vgg16" and resolve_weights("vgg16", cfg.model.weights) is None:
        (log.warning if group.is_writer else log.debug)(
            "vgg16 from scratch: without batch normalisation it learns slowly from random initialisation at "
            "the study's settings (at SGD lr 0.001 it sat at chance for about 12 epochs on synthetic data). "
            "For a from-scratch baseline use model vgg16_bn with train.backbone_lr_factor 10 and "
            "train.recalibrate_bn (the demo's recipe)"
        )
    model = build_model(
        model=cfg.model.model,
        # A resumed run overwrites every weight: don't read the ImageNet file for nothing.
        weights=None if state is not None else cfg.model.weights,
        head=cfg.model.head,
        image_size=params.image_size,
        dropout=cfg.model.dropout,
        seed=derive_seed(params.seed, "init"),
    )
    autocast_dtype, channels_last = _precision(device)
    model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    optimizer = build_optimizer(model, params)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])

    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
    try:
        for epoch in range(start, params.epochs):
            apply_schedule(model, optimizer, params, epoch)
            # DDP (several ranks), rebuilt when the schedule changed what trains; else the model.
            trainee = group.wrap(model)
            train_loader.sampler.set_epoch(epoch)
            # Dropout's stream, reseeded per epoch so a resumed epoch replays exactly (and
            # per rank, so the ranks' masks differ).
            torch.manual_seed(
                derive_seed(params.seed, "epoch", epoch) if group.world_size == 1
                else derive_seed(params.seed, "epoch", epoch, "rank", group.rank)
            )
            started = time.perf_counter()
            hook = None if on_batch is None else (lambda b, e=epoch + 1: on_batch(e, b))
            train = train_one_epoch(
                trainee, train_loader, optimizer, device, pos_weight=info["pos_weight"],
                autocast_dtype=autocast_dtype, channels_last=channels_last, max_batches=params.max_batches,
                on_batch=hook,
            )
            if stats_loader is not None:
                recalibrate_batchnorm(model, stats_loader, device, autocast_dtype=autocast_dtype,
                                      channels_last=channels_last, max_batches=params.max_batches)
            # Rank 0's BatchNorm statistics everywhere, then a check that the replicas agree.
            group.broadcast_buffers(model)
            group.check_in_sync(model)
            # The unwrapped model: no collective depends on how many batches a rank holds.
            val = None if group.world_size > 1 and len(val_loader) == 0 else evaluate(
                model, val_loader, device, pos_weight=info["pos_weight"], autocast_dtype=autocast_dtype,
                channels_last=channels_last, max_batches=params.max_batches,
            )
            if group.world_size > 1:
                train, val = group.sum_metrics(train), group.sum_metrics(val)
            row = {
                "epoch": epoch + 1,
                "train_loss": train["loss"],
                "train_accuracy": train["accuracy"],
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "lr": optimizer.param_groups[0]["lr"],
                "backbone_lr": optimizer.param_groups[1]["lr"],
                "seconds": group.max(time.perf_counter() - started),
            }
            history.append(row)
            samples.append({"epoch": epoch + 1, "train": int(train["n"]), "validation": int(val["n"]),
                            "world_size": group.world_size})
            improved = val["loss"] < best_val  # False for NaN
            if improved:
                best_val, best_epoch, bad_epochs = val["loss"], epoch + 1, 0
            else:
                bad_epochs += 1
            stopped = params.patience is not None and bad_epochs >= params.patience
            if group.is_writer:
                if improved:
                    _atomic_save(
                        {
                            "format": _FORMAT,
                            "epoch": epoch + 1,
                            "model": model.state_dict(),
                            "model_config": dict(model.config),
                            "config": cfg.model_dump(mode="json"),
                            "val_loss": val["loss"],
                            "val_accuracy": val["accuracy"],
                            "world_size": group.world_size,
                            "rank": group.rank,
                        },
                        best_path,
                    )
                atomic_write_text(history_path, _history_csv(history))
                _atomic_save(
                    {
                        "format": _FORMAT,
                        "epoch": epoch + 1,
                        "model": model.state_dict(),
                        "model_config": dict(model.config),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": None,
                        "config": cfg.model_dump(mode="json"),
                        "history": history,
                        "best_val_loss": best_val,
                        "best_epoch": best_epoch,
                        "epochs_without_improvement": bad_epochs,
                        "stopped_early": stopped,
                        "rng": _rng_state(),
                        "manifest_fingerprint": fingerprint,
                        "samples": samples,
                        "world_size": group.world_size,
                        "rank": group.rank,
                    },
                    last_path,
                )
            # The others wait until rank 0 has committed the epoch.
            group.barrier()
            say(
                "epoch %d/%d: train loss %.4f acc %.3f, val loss %.4f acc %.3f, lr %.3g / backbone %.3g, %.1fs%s",
                epoch + 1, params.epochs, row["train_loss"], row["train_accuracy"], row["val_loss"],
                row["val_accuracy"], row["lr"], row["backbone_lr"], row["seconds"],
                " (best)" if best_epoch == epoch + 1 else "",
            )
            if progress is not None and group.is_writer:
                progress(
                    epoch + 1,
                    {**row, "epochs": params.epochs, "best_val_loss": best_val, "best_epoch": best_epoch,
                     "stopped_early": stopped},
                )
            if stopped:
                say(
                    "early stopping after epoch %d: no lower validation loss for %d epochs (best %.4f at epoch %s)",
                    epoch + 1, bad_epochs, best_val, best_epoch,
                )
                break
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
    return summary()


# --------------------------------------------------------------------------------------
# Entry point for torchrun
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m models.train --config CONFIG.json``: :func:`fit` outside Prefect.

    The entry point for ``torchrun`` (every rank runs it; a Prefect flow would start one
    flow run per rank)::

        torchrun --standalone --nproc_per_node=4 -m models.train --config RUN/config.json

    ``CONFIG.json`` is a ``TrainConfig`` as JSON, such as the ``config.json`` every run
    writes to its folder; rerunning with it resumes that run. Without ``torchrun`` it
    trains in this one process.

    Args:
        argv: Arguments; default ``sys.argv[1:]``.

    Returns:
        0, or 2 when the configuration, the data or the weights are bad (the error is
        printed to stderr).
    """
    parser = argparse.ArgumentParser(
        prog="python -m models.train",
        description="Train a classifier from a TrainConfig JSON (one process, or one per GPU under torchrun).",
    )
    parser.add_argument("--config", type=Path, required=True,
                        help="TrainConfig as JSON, e.g. the config.json of a run folder")
    parser.add_argument("--run-dir", default=None, help="override the configuration's run_dir")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                        help="override train.device (each torchrun process uses cuda:LOCAL_RANK)")
    parser.add_argument("--summary", type=Path, default=None,
                        help="rank 0 writes fit()'s result here as JSON")
    args = parser.parse_args(argv)

    try:
        env = distributed.current_env()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if env.rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {env.rank}/{env.world_size}] %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = TrainConfig.model_validate_json(args.config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"error: cannot read the training configuration '{args.config}': {exc}", file=sys.stderr)
        return 2
    if args.run_dir is not None:
        cfg = cfg.model_copy(update={"run_dir": args.run_dir})
    if args.device is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": args.device})})
    try:
        result = fit(cfg)
    except (ValueError, FileNotFoundError, NotImplementedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if env.rank == 0:
        if args.summary is not None:
            atomic_write_json(args.summary, result)
        print(json.dumps(result, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: the loader workers and
    # pickles then refer to models.train's classes.
    from models.train import main as _main

    raise SystemExit(_main())
