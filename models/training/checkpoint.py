"""The run folder's contents: checkpoint files, the one checkpoint-dict builder, resume checks, history.

Run folder (``cfg.run_dir``; its file names and :func:`~tasks.core.run_folder.chosen_checkpoint` live in
:mod:`tasks.core.run_folder`):

* ``last.pt``: written atomically after every epoch: ``model`` (state_dict),
  ``model_config`` (the :func:`~models.nets.classifier.build_model` arguments), ``optimizer``,
  ``scheduler`` (``None``: the study uses none), ``epoch`` (completed epochs), ``config``
  (``TrainConfig.model_dump(mode="json")``), ``history``, ``best_val_loss``,
  ``best_epoch``, ``epochs_without_improvement``, ``stopped_early``, ``rng``,
  ``manifest_fingerprint`` and ``samples``. Loads with ``torch.load(..., weights_only=True)``.
* ``best.pt``: the model with the lowest validation loss so far (``model``,
  ``model_config``, ``config``, ``epoch``, ``val_loss``, ``val_accuracy``); see
  :func:`load_classifier`.
* ``history.csv``: one row per epoch (:data:`HISTORY_COLUMNS`), rewritten atomically.
* ``config.json``: the configuration of the latest invocation.

Both checkpoints also carry ``format``, ``world_size`` and ``rank``, ``training_data`` (the
training manifest's fingerprint and hashed patient, study and pixel sets of its training and
validation splits, :mod:`models.inference.provenance`) and ``weights_source`` (where the weights started,
:func:`models.weights.transfer.weights_source`). No file is named like
``name-<hex>.pth``: the weights loader would hash-check it.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from models.nets.classifier import TumorClassifier, build_model
from tasks.core.config import TrainConfig
from tasks.core.files import atomic_write

__all__ = [
    "HISTORY_COLUMNS",
    "RESUME_IGNORED_FIELDS",
    "RunProgress",
    "checkpoint_dict",
    "config_differences",
    "history_csv",
    "load_classifier",
    "read_resume_state",
    "restore_rng_state",
    "rng_state",
    "save_checkpoint",
]

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

#: ``TrainConfig`` fields (dotted) that don't change what a run computes, so a run may be
#: resumed with different values: where it runs, how many loader workers, how many epochs
#: in all (no schedule depends on it; raising it extends a finished run), the optimiser steps
#: early stopping waits for (like epochs, only when the run may end; a checkpoint written
#: before the field existed resumes), where the run folder is, and the manifest's path (its
#: *content* is checked by fingerprint instead).
RESUME_IGNORED_FIELDS = frozenset({"run_dir", "manifest", "train.device", "train.num_workers", "train.epochs",
                                   "train.multi_gpu", "train.min_steps"})


@dataclass
class RunProgress:
    """How far a run has come: what ``last.pt`` stores besides the weights and optimiser.

    Attributes:
        history: The ``history.csv`` rows so far.
        samples: Images trained and validated on per epoch (over all ranks); not in
            ``history.csv``.
        start: Epochs completed when this invocation started.
        best_val: Lowest validation loss so far (``inf`` before any).
        best_epoch: Its epoch (1-based), ``None`` before any finite loss.
        bad_epochs: Epochs since the last improvement.
        stopped: Whether early stopping ended the run.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    start: int = 0
    best_val: float = math.inf
    best_epoch: int | None = None
    bad_epochs: int = 0
    stopped: bool = False

    @classmethod
    def resumed(cls, state: Mapping[str, Any] | None) -> RunProgress:
        """The progress stored in a ``last.pt`` dict, or a fresh run's for ``None``."""
        if state is None:
            return cls()
        return cls(
            history=[dict(r) for r in state["history"]],
            samples=[dict(r) for r in state.get("samples", [])],
            start=int(state["epoch"]),
            best_val=float(state["best_val_loss"]),
            best_epoch=state["best_epoch"],
            bad_epochs=int(state["epochs_without_improvement"]),
            stopped=bool(state["stopped_early"]),
        )

    @property
    def steps(self) -> int:
        """Optimiser steps taken so far (0 for runs recorded before steps were counted)."""
        return sum(int(s.get("steps", 0)) for s in self.samples)

    def record(self, row: dict[str, Any], sample: dict[str, Any], patience: int | None, *,
               min_steps: int = 0) -> bool:
        """Append an epoch's history row, update best and early stopping; return whether it improved.

        Early stopping (``patience`` epochs without a lower validation loss) waits until the run
        has taken ``min_steps`` optimiser steps.
        """
        self.history.append(row)
        self.samples.append(sample)
        improved = row["val_loss"] < self.best_val  # False for NaN
        if improved:
            self.best_val, self.best_epoch, self.bad_epochs = row["val_loss"], row["epoch"], 0
        else:
            self.bad_epochs += 1
        self.stopped = patience is not None and self.bad_epochs >= patience and self.steps >= min_steps
        return improved

    def as_checkpoint(self) -> dict[str, Any]:
        """The ``last.pt`` entries of this progress."""
        return {
            "history": self.history,
            "best_val_loss": self.best_val,
            "best_epoch": self.best_epoch,
            "epochs_without_improvement": self.bad_epochs,
            "stopped_early": self.stopped,
        }


def checkpoint_dict(
    model: TumorClassifier,
    cfg: TrainConfig,
    epoch: int,
    *,
    world_size: int,
    rank: int,
    optimizer: torch.optim.Optimizer | None = None,
    **entries: Any,
) -> dict[str, Any]:
    """A checkpoint: the model, its architecture and configuration, and ``entries``.

    ``best.pt`` passes ``val_loss`` and ``val_accuracy``; ``last.pt`` passes the optimiser
    and :meth:`RunProgress.as_checkpoint`, ``rng``, ``manifest_fingerprint`` and ``samples``.

    Args:
        model: The classifier (unwrapped).
        cfg: The run's configuration.
        epoch: Completed epochs.
        world_size: Processes that trained.
        rank: The writing rank.
        optimizer: Its optimiser, for a resumable checkpoint (adds ``scheduler``: ``None``).
        entries: Further entries, in order.
    """
    ckpt: dict[str, Any] = {
        "format": _FORMAT,
        "epoch": epoch,
        "model": model.state_dict(),
        "model_config": dict(model.config),
    }
    if optimizer is not None:
        ckpt.update(optimizer=optimizer.state_dict(), scheduler=None)
    ckpt["config"] = cfg.model_dump(mode="json")
    ckpt.update(entries)
    ckpt.update(world_size=world_size, rank=rank)
    return ckpt


def save_checkpoint(obj: Mapping[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename (no half-written file)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def read_resume_state(last: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """``last.pt`` as a dict when it exists and was written with the same configuration.

    Returns:
        The checkpoint, or ``None`` when there is no ``last.pt`` (a fresh run).

    Raises:
        ValueError: Not a tomoflow training checkpoint, or another configuration (ignoring
            :data:`RESUME_IGNORED_FIELDS`); the message names the differing fields.
    """
    if not last.is_file():
        return None
    # best.pt holds weights only (no optimiser or generator state), so it cannot be resumed from.
    state = read_checkpoint(last, advice=(
        "delete it and run the same command again to train this run from its start; best.pt, if present, "
        "still holds the best epoch's weights for tomoflow evaluate"))
    if not isinstance(state, Mapping) or state.get("format") != _FORMAT:
        raise ValueError(
            f"'{last}' is not a tomoflow training checkpoint of format {_FORMAT!r}; "
            "use a new run_dir or delete the file"
        )
    differing = config_differences(state["config"], cfg)
    if differing:
        old, new = _dotted(state["config"]), _dotted(cfg.model_dump(mode="json"))
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differing)
        raise ValueError(
            f"run_dir '{last.parent}' holds a run ('{last}') with another configuration; differing "
            f"fields: {details}. Use a new run_dir for a new configuration (or delete '{last}' "
            "to start this one over)"
        )
    return state


def _dotted(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"train.lr": value}`` (tuples as lists, as JSON has them)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_dotted(value, f"{name}."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def config_differences(saved: Mapping[str, Any], current: TrainConfig) -> list[str]:
    """Dotted names of the fields that differ and matter (not in :data:`RESUME_IGNORED_FIELDS`).

    Args:
        saved: A checkpoint's ``config`` (``TrainConfig.model_dump(mode="json")``).
        current: The configuration to compare.
    """
    old, new = _dotted(saved), _dotted(current.model_dump(mode="json"))
    missing = object()
    return sorted(
        k
        for k in old.keys() | new.keys()
        if k not in RESUME_IGNORED_FIELDS and old.get(k, missing) != new.get(k, missing)
    )


def rng_state() -> dict[str, Any]:
    """The torch, CUDA, numpy and Python generators' states, as ``last.pt`` stores them."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the generators to a :func:`rng_state` (CUDA's only on a machine with as many GPUs)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def read_checkpoint(path: str | os.PathLike[str], *, advice: str) -> Any:
    """``torch.load`` (``weights_only``) with one clear line for a truncated or damaged file.

    Raises:
        ValueError: The file cannot be read as a checkpoint; the message names it and ``advice``.
    """
    import pickle
    import zipfile

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(
            f"checkpoint '{path}' is truncated or damaged ({type(exc).__name__}) and cannot be read; {advice}"
        ) from None


def load_classifier(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> TumorClassifier:
    """Rebuild the classifier saved in ``best.pt`` or ``last.pt``, in eval mode.

    Args:
        path: A checkpoint written by :func:`~models.training.fit.fit`.
        device: Where to put the model.

    Raises:
        ValueError: The file isn't a tomoflow training checkpoint.
    """
    ckpt = read_checkpoint(path, advice=(
        "train again (tomoflow train with the same --out resumes from last.pt), or evaluate another run"))
    if not isinstance(ckpt, Mapping) or "model" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"'{path}' is not a tomoflow training checkpoint (no 'model' and 'model_config')")
    model = build_model(**ckpt["model_config"], weights=None)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def history_csv(history: list[dict[str, Any]]) -> str:
    """The text of ``history.csv`` (:data:`HISTORY_COLUMNS`)."""
    return pd.DataFrame(history, columns=HISTORY_COLUMNS).to_csv(index=False)

