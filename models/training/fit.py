"""The run: :func:`fit` trains a classifier epoch by epoch, with checkpoints, history,
early stopping and resume.

Reproducibility. Nothing draws from a random stream that carries
over from one epoch to the next: the training order and every sample's augmentation seed
come from ``(seed, epoch)`` (:class:`~models.training.data.EpochSampler`), and torch's global
generator, which dropout uses, is reseeded from ``(seed, epoch)`` at the start of each
epoch. So epoch ``e`` computes the same thing whether the run started at epoch 1 or was
resumed from ``last.pt`` after a kill, and whether there are 0 or 8 loader workers. On the
CPU the same seed gives the same history to the last bit; on CUDA (bf16 autocast,
``channels_last``, cuDNN autotuning) results agree to rounding.

The run folder's files are described in :mod:`models.training.checkpoint`. Several GPUs: launched
by ``torchrun`` (``WORLD_SIZE`` > 1), :func:`fit` trains with DistributedDataParallel, one
process per GPU (see :mod:`models.training.distributed`; the entry point is ``python -m
models.training.torchrun_entry``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader

from models.inference.provenance import training_data_record
from models.nets.classifier import TumorClassifier, build_model
from models.training import distributed
from models.training.checkpoint import (
    RunProgress,
    checkpoint_dict,
    history_csv,
    read_resume_state,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from models.training.data import batchnorm_loader, load_manifest, make_loaders
from models.training.engine import (
    apply_schedule,
    build_optimizer,
    evaluate,
    precision,
    recalibrate_batchnorm,
    resolve_device,
    train_one_epoch,
)
from models.training.augment import derive_seed
from models.weights.resolve import resolve_weights
from models.weights.transfer import weights_source
from tasks.core.config import TrainConfig
from tasks.core.files import atomic_write_json, atomic_write_text, file_fingerprint
from tasks.core.run_folder import RunPaths

__all__ = ["BatchHook", "ProgressFn", "fit"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, dict[str, Any]], None]
BatchHook = Callable[[int, int], None]


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
    :data:`~models.training.checkpoint.RESUME_IGNORED_FIELDS`, and the same manifest content), then the manifest
    (:func:`~models.training.data.load_manifest`). Then, per epoch ``e`` (0-based): freeze or unfreeze
    (:func:`~models.training.engine.apply_schedule`), train, re-estimate the BatchNorm statistics when
    ``train.recalibrate_bn`` is on (:func:`~models.training.engine.recalibrate_batchnorm`), evaluate, append to
    the history, write ``best.pt`` if the validation loss improved, rewrite
    ``history.csv``, write ``last.pt`` (the commit
    point: a kill before it repeats epoch ``e`` on resume, bit for bit on the CPU), log,
    and call ``progress``. Early stopping ends the run after ``patience`` epochs without a
    lower validation loss, once it has taken ``train.min_steps`` optimiser steps.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs ``fit`` with the same
    configuration: it joins the process group (NCCL on ``cuda:LOCAL_RANK``, gloo on the
    CPU), trains the model in DistributedDataParallel on its share of each epoch's order
    and of the validation split (``train.batch_size`` is the global batch and must be a
    multiple of ``WORLD_SIZE``), sums the metrics over all ranks so every rank computes the
    same history row and early-stopping decision, and leaves the process group at the end.
    Only rank 0 writes the run folder and calls ``progress``; ``on_batch`` is called on
    every rank. See :mod:`models.training.distributed`. Without ``torchrun`` nothing of this happens.

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
        ``world_size`` (processes that trained, 1 without ``torchrun``), ``optimizer_steps``
        (steps taken in all epochs) and ``capped`` (the run ended at ``train.epochs`` before early
        stopping ended it, or ``train.max_batches`` limited its epochs).

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
    paths = RunPaths.of(cfg.run_dir)
    # Every rank computes the same; one of them says so.
    say = log.info if group.is_writer else log.debug
    state = read_resume_state(paths.last, cfg)
    frame, fingerprint = _read_manifest(cfg, state)
    run = RunProgress.resumed(state)
    if group.is_writer:
        paths.last.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(paths.config, cfg.model_dump(mode="json"))
    if run.stopped or run.start >= params.epochs:
        say("run in '%s' is already complete (%d epochs%s); nothing to do",
            paths.last.parent, run.start, ", stopped early" if run.stopped else "")
        return _summary(paths, run, device, group, params)

    trainer = _Trainer.build(cfg, device, group, frame, state, say)
    # What the model sees (and where it started), kept in both checkpoints for evaluate's audit.
    recorded = _provenance(cfg, frame, fingerprint) if group.is_writer else {}
    with _deterministic_on_cpu(device):
        for epoch in range(run.start, params.epochs):
            row, sample = trainer.run_epoch(epoch, on_batch)
            improved = run.record(row, sample, params.patience, min_steps=params.min_steps)
            if group.is_writer:
                trainer.save(paths, run, improved=improved, fingerprint=fingerprint, recorded=recorded)
            # The others wait until rank 0 has committed the epoch.
            group.barrier()
            say(
                "epoch %d/%d: train loss %.4f acc %.3f, val loss %.4f acc %.3f, lr %.3g / backbone %.3g, %.1fs%s",
                epoch + 1, params.epochs, row["train_loss"], row["train_accuracy"], row["val_loss"],
                row["val_accuracy"], row["lr"], row["backbone_lr"], row["seconds"],
                " (best)" if run.best_epoch == epoch + 1 else "",
            )
            if progress is not None and group.is_writer:
                progress(epoch + 1, {**row, "epochs": params.epochs, "best_val_loss": run.best_val,
                                     "best_epoch": run.best_epoch, "stopped_early": run.stopped})
            if run.stopped:
                say("early stopping after epoch %d (%d optimiser steps): no lower validation loss for %d epochs "
                    "(best %.4f at epoch %s)", epoch + 1, run.steps, run.bad_epochs, run.best_val, run.best_epoch)
                break
    return _summary(paths, run, device, group, params)


def _read_manifest(cfg: TrainConfig, state: dict[str, Any] | None) -> tuple[pd.DataFrame, str]:
    """The checked manifest and its content fingerprint, which a resumed run must share.

    Raises:
        ValueError: ``state`` (``last.pt``) was trained on other manifest content.
    """
    manifest = Path(cfg.manifest)
    frame = load_manifest(manifest)
    fingerprint = file_fingerprint(manifest, content=True)
    if state is not None and state.get("manifest_fingerprint") != fingerprint:
        raise ValueError(
            f"run_dir '{Path(cfg.run_dir)}' holds a run trained on other manifest content than '{manifest}' "
            "(differing field: manifest content); use a new run_dir for the new manifest"
        )
    return frame, fingerprint


def _provenance(cfg: TrainConfig, frame: pd.DataFrame, fingerprint: str) -> dict[str, Any]:
    """The checkpoints' ``training_data`` and ``weights_source`` entries (see :mod:`models.inference.provenance`)."""
    return {"training_data": training_data_record(frame, root=Path(cfg.manifest).parent, fingerprint=fingerprint),
            "weights_source": weights_source(cfg.model.model, cfg.model.weights, cfg.model.transfer)}


def _summary(paths: RunPaths, run: RunProgress, device: torch.device, group: distributed.Group,
             params: Any) -> dict[str, Any]:
    """What :func:`fit` returns."""
    # Capped: the run ended at train.epochs (or trained on at most max_batches per epoch)
    # before early stopping found it had learned what it can.
    capped = params.max_batches is not None or (not run.stopped and len(run.history) >= params.epochs)
    return {
        "optimizer_steps": run.steps,
        "capped": bool(capped),
        "best": str(paths.best) if run.best_epoch is not None else None,
        "last": str(paths.last),
        "history": str(paths.history),
        "config": str(paths.config),
        "epochs_run": len(run.history),
        "best_epoch": run.best_epoch,
        "best_val_loss": run.best_val if run.best_epoch is not None else None,
        "stopped_early": run.stopped,
        "device": str(device),
        "resumed_from": run.start,
        "world_size": group.world_size,
    }


@contextmanager
def _deterministic_on_cpu(device: torch.device) -> Iterator[None]:
    """Deterministic kernels on the CPU (bit-identical reruns), cuDNN autotuning on CUDA; restored after."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark


@dataclass
class _Trainer:
    """The model, its optimiser and loaders, and how to run and commit one epoch of them."""

    cfg: TrainConfig
    device: torch.device
    group: distributed.Group
    model: TumorClassifier
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    val_loader: DataLoader
    stats_loader: DataLoader | None
    pos_weight: float | None

    @classmethod
    def build(cls, cfg: TrainConfig, device: torch.device, group: distributed.Group, frame: pd.DataFrame,
              state: dict[str, Any] | None, say: Callable[..., None]) -> _Trainer:
        """Loaders, model and optimiser, restored from ``state`` (``last.pt``) when resuming."""
        params = cfg.train
        train_loader, val_loader, info = make_loaders(cfg, manifest=frame, rank=group.rank,
                                                      world_size=group.world_size)
        stats_loader = batchnorm_loader(cfg, frame, group.rank, group.world_size) if params.recalibrate_bn else None
        _announce(cfg, device, group, info, state, say)
        model = build_model(
            model=cfg.model.model,
            # A resumed run overwrites every weight: don't read the ImageNet file for nothing.
            weights=None if state is not None else cfg.model.weights,
            head=cfg.model.head,
            image_size=params.image_size,
            dropout=cfg.model.dropout,
            seed=derive_seed(params.seed, "init"),
            transfer=cfg.model.transfer,
        )
        _, channels_last = precision(device)
        model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
        optimizer = build_optimizer(model, params)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            restore_rng_state(state["rng"])
        return cls(cfg, device, group, model, optimizer, train_loader, val_loader, stats_loader, info["pos_weight"])

    def run_epoch(self, epoch: int, on_batch: BatchHook | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Train, recalibrate, validate epoch ``epoch`` (0-based); return its history row and sample counts."""
        params, group, model, device = self.cfg.train, self.group, self.model, self.device
        autocast_dtype, channels_last = precision(device)
        apply_schedule(model, self.optimizer, params, epoch)
        # DDP (several ranks), rebuilt when the schedule changed what trains; else the model.
        trainee = group.wrap(model)
        self.train_loader.sampler.set_epoch(epoch)
        # Dropout's stream, reseeded per epoch so a resumed epoch replays exactly (and
        # per rank, so the ranks' masks differ).
        torch.manual_seed(
            derive_seed(params.seed, "epoch", epoch) if group.world_size == 1
            else derive_seed(params.seed, "epoch", epoch, "rank", group.rank)
        )
        started = time.perf_counter()
        hook = None if on_batch is None else (lambda b, e=epoch + 1: on_batch(e, b))
        train = train_one_epoch(
            trainee, self.train_loader, self.optimizer, device, pos_weight=self.pos_weight,
            autocast_dtype=autocast_dtype, channels_last=channels_last, max_batches=params.max_batches,
            on_batch=hook,
        )
        if self.stats_loader is not None:
            recalibrate_batchnorm(model, self.stats_loader, device, autocast_dtype=autocast_dtype,
                                  channels_last=channels_last, max_batches=params.max_batches)
        # Rank 0's BatchNorm statistics everywhere, then a check that the replicas agree.
        group.broadcast_buffers(model)
        group.check_in_sync(model)
        # The unwrapped model: no collective depends on how many batches a rank holds.
        val = None if group.world_size > 1 and len(self.val_loader) == 0 else evaluate(
            model, self.val_loader, device, pos_weight=self.pos_weight, autocast_dtype=autocast_dtype,
            channels_last=channels_last, max_batches=params.max_batches,
        )
        steps = int(train.get("steps", 0))  # optimiser steps: the same on every rank, not summed
        if group.world_size > 1:
            train, val = group.sum_metrics(train), group.sum_metrics(val)
        row = {
            "epoch": epoch + 1,
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "backbone_lr": self.optimizer.param_groups[1]["lr"],
            "seconds": group.max(time.perf_counter() - started),
        }
        # Images trained and validated on (over all ranks); kept in last.pt, not history.csv.
        sample = {"epoch": epoch + 1, "train": int(train["n"]), "validation": int(val["n"]),
                  "world_size": group.world_size, "steps": steps}
        return row, sample

    def save(self, paths: RunPaths, run: RunProgress, *, improved: bool, fingerprint: str,
             recorded: dict[str, Any]) -> None:
        """Write ``best.pt`` (if ``improved``), ``history.csv`` and ``last.pt``, the commit point, in that order.

        ``recorded`` (``training_data`` and ``weights_source``) goes into both checkpoints.
        """
        epoch, row = run.history[-1]["epoch"], run.history[-1]
        where = {"world_size": self.group.world_size, "rank": self.group.rank}
        if improved:
            save_checkpoint(checkpoint_dict(self.model, self.cfg, epoch, **where, val_loss=row["val_loss"],
                                            val_accuracy=row["val_accuracy"], **recorded), paths.best)
        atomic_write_text(paths.history, history_csv(run.history))
        save_checkpoint(
            checkpoint_dict(self.model, self.cfg, epoch, **where, optimizer=self.optimizer, **run.as_checkpoint(),
                            rng=rng_state(), manifest_fingerprint=fingerprint, samples=run.samples, **recorded),
            paths.last,
        )


def _announce(cfg: TrainConfig, device: torch.device, group: distributed.Group, info: dict[str, Any],
              state: dict[str, Any] | None, say: Callable[..., None]) -> None:
    """Log what is about to train; warn about VGG16 without BatchNorm from scratch."""
    say(
        "training %s (%s weights, %s head) on %s: %d training images (%d tumour, %d normal), %d validation "
        "images; class balance %s%s; %d loader workers; %s",
        cfg.model.model, cfg.model.weights, cfg.model.head,
        device if group.world_size == 1 else
        f"{group.world_size} processes ({device.type}, {info['batch_size_per_rank']} images per process and step)",
        info["n_train"], info["n_train_pos"],
        info["n_train_neg"], info["n_val"], info["class_balance"],
        f" (pos_weight {info['pos_weight']:.3g})" if info["pos_weight"] is not None else "",
        info["num_workers"], f"resuming after epoch {int(state['epoch'])}" if state is not None else "fresh run",
    )
    if state is None and cfg.model.model == "vgg16" and resolve_weights("vgg16", cfg.model.weights) is None:
        (log.warning if group.is_writer else log.debug)(
            "vgg16 from scratch: without batch normalisation it learns slowly from random initialisation at "
            "the study's settings (at SGD lr 0.001 it sat at chance for about 12 epochs on synthetic data). "
            "For a from-scratch baseline use model vgg16_bn with train.backbone_lr_factor 10 and "
            "train.recalibrate_bn (the demo's recipe)"
        )
