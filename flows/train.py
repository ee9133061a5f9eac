"""The ``train-classifier`` flow: optional offline balancing, then resumable training.

The tasks live in :mod:`tasks.train.steps`; this module only calls them in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from tasks.core.config import TrainConfig
from tasks.core.files import ensure_writable_dir, output_lock
from tasks.evaluate.locks import source_run_idle
from tasks.infra.lifecycle import cancellable
from tasks.infra.process_defaults import apply_process_defaults
from tasks.infra.run_names import config_run_name
from tasks.train.steps import (
    balance_offline,
    check_weights,
    fit_or_reuse,
    publish_history,
)


def _describe(cfg: TrainConfig) -> str:
    """``vgg16 sgd`` of ``train vgg16 sgd`` (``scratch`` / ``custom-weights`` added without ImageNet weights)."""
    weights = {"imagenet": "", "none": " scratch"}.get(cfg.model.weights.kind, " custom-weights")
    return f"{cfg.model.model} {cfg.train.optimizer}{weights}"


_run_name = config_run_name("train", TrainConfig, _describe)


@flow(name="train-classifier", flow_run_name=_run_name, log_prints=True)
def train_classifier(config: TrainConfig = TrainConfig()) -> dict[str, Any]:
    """Fine-tune VGG16 or Inception v3 (or train from scratch) on a prepared manifest.

    Args:
        config: Manifest, run folder, network, optimisation and augmentation.

    Returns:
        Paths of ``best``, ``last``, ``history`` and ``config`` in the run folder, and a summary.
    """
    apply_process_defaults()  # log redaction and the environment defaults, in a deployment's run too
    # One writer per run folder (the CLI holds the lock already; a deployment takes it here).
    run_dir = ensure_writable_dir(config.run_dir, what="run folder (--out)")
    with output_lock(run_dir, what=f"flow run {flow_run.name or ''}"):
        return cancellable(_train, config, out=run_dir, flow="train-classifier")


def _train(config: TrainConfig) -> dict[str, Any]:
    cache = {"result_storage": (Path(config.run_dir) / ".cache").resolve()}
    source_run_idle(config.model.weights, run_dir=config.run_dir)  # never cached: a run may be training now
    check_weights.with_options(**cache)(config)
    if config.augment.offline_balance:
        balanced = balance_offline.with_options(**cache)(config.manifest, config)
        config = config.model_copy(update={"manifest": balanced})
    result = fit_or_reuse(config, cache)
    publish_history(config, result)
    return result
