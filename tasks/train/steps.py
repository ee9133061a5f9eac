"""Prefect tasks of the ``train-classifier`` flow: check-weights, balance-offline, fit-model.

Each task is a thin wrapper over a plain function a test can call without Prefect
(:func:`models.nets.backbones.resolve_weights`, :func:`models.training.augment.balance_offline`,
:func:`models.training.fit.fit`); this module adds the cache keys, retries and progress artifacts.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from tasks.infra.caching import content_cache_key_fn, content_key
from tasks.core.config import TrainConfig
from tasks.infra.rerun import run_or_reuse
from tasks.infra.retry import retry_policy


def _weights_file(config: TrainConfig) -> str | None:
    """The file the weights setting reads when it is a path (a run folder's checkpoint), else None."""
    weights = config.model.weights
    if weights.kind in ("imagenet", "none"):
        return None
    try:
        return str(weights.checkpoint() or weights)
    except FileNotFoundError:
        return str(weights)


def _weights_key(context: Any, parameters: dict[str, Any]) -> str:
    """Cache key of check-weights: the network section, and the weights file when it is a path."""
    config = parameters["config"]
    return content_key({"model": config.model, "weights": _weights_file(config)}, files=("weights",),
                       salt=context.task.name)


def _fit_key(context: Any, parameters: dict[str, Any]) -> str:
    """Cache key of fit-model: the whole configuration, the manifest's content and the starting weights' content."""
    config = parameters["config"]
    return content_key({"config": config, "manifest": config.manifest, "weights": _weights_file(config)},
                       files=("manifest", "weights"), salt=context.task.name)


# Cached, so that a rerun with nothing changed imports neither torch nor torchvision.
@task(name="check-weights", cache_key_fn=_weights_key, persist_result=True)
def check_weights(config: TrainConfig) -> str:
    """Fail before any work if the starting weights are not on this machine."""
    from models.weights.resolve import resolve_weights

    return str(resolve_weights(config.model.model, config.model.weights))


@task(name="balance-offline", cache_key_fn=content_cache_key_fn(files=("manifest",)), persist_result=True,
      **retry_policy(retries=2, delay_seconds=1))
def balance_offline(manifest: str, config: TrainConfig) -> str:
    """Write augmented copies of training positives up to the target ratio (single-slice)."""
    from models.training.augment import balance_offline as balance

    return str(balance(manifest, target_ratio=config.augment.target_ratio, seed=config.train.seed,
                       cfg=config.augment))


# A retry resumes from last.pt; only a lost worker, a dropped connection or an I/O hiccup is retried.
@task(name="fit-model", **retry_policy(retries=2, delay_seconds=5),
      cache_key_fn=_fit_key, persist_result=True)
def fit_model(config: TrainConfig) -> dict[str, Any]:
    """Train (or resume from the run folder's last checkpoint) and return the run's files."""
    from models.training.fit import fit

    logger = get_run_logger()
    artifact = create_progress_artifact(0.0, key="training-progress",
                                        description=f"Training {config.model.model} for up to {config.train.epochs} epochs")

    def progress(epoch: int, row: dict[str, Any]) -> None:
        update_progress_artifact(artifact, 100.0 * epoch / config.train.epochs)
        logger.info("epoch %d/%d: train loss %.4f acc %.3f, val loss %.4f acc %.3f", epoch, config.train.epochs,
                    row["train_loss"], row["train_accuracy"], row["val_loss"], row["val_accuracy"])

    gpus = visible_gpus(config)
    if gpus > 1:
        from models.training.distributed import train_with_torchrun

        logger.info("training on %d GPUs with torchrun (DistributedDataParallel)", gpus)
        result = train_with_torchrun(config, gpus)
    else:
        result = fit(config, progress=progress)
    update_progress_artifact(artifact, 100.0)
    return result


#: The keys of fit-model's result that name files in the run folder (``best`` is None before a best epoch).
FIT_OUTPUTS = ("best", "last", "history", "config")


def fit_or_reuse(config: TrainConfig, cache: dict[str, Any]) -> dict[str, Any]:
    """fit-model, or its stored result when the same configuration and manifest finished before.

    A reused result reports, like a resumed run that had nothing left to do, every epoch as
    found at the start (``resumed_from == epochs_run``). When a file it names is gone, the
    model is fitted again (resuming from what is left in the run folder): the rule of
    :func:`tasks.infra.rerun.run_or_reuse`.
    """
    outcome = run_or_reuse(fit_model, cache, config, outputs=FIT_OUTPUTS)
    result = dict(outcome.result)
    if outcome.reused:
        result["resumed_from"] = result.get("epochs_run", result.get("resumed_from"))
    return result


def visible_gpus(config: TrainConfig) -> int:
    """GPUs to train on: all visible ones when allowed, else one (or none on the CPU)."""
    if config.train.device == "cpu" or not config.train.multi_gpu:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def publish_history(config: TrainConfig, result: dict[str, Any]) -> None:
    """The per-epoch table as the ``training-history`` artifact, and one log line of the outcome."""
    import pandas as pd
    from prefect.artifacts import create_table_artifact

    history = pd.read_csv(result["history"])
    create_table_artifact(history.round(4).to_dict("records"), key="training-history",
                          description=f"Per-epoch loss and accuracy of {config.run_dir}")
    get_run_logger().info("best epoch %s (val loss %s), %d epochs, run folder %s", result.get("best_epoch"),
                          result.get("best_val_loss"), result.get("epochs_run"), config.run_dir)
    publish_starting_point(config)


def publish_starting_point(config: TrainConfig) -> None:
    """The ``starting-point`` artifact: where the weights came from (a tomoflow source with its hash and figures)."""
    from prefect.artifacts import create_markdown_artifact

    from models.weights.transfer import weights_source
    from tasks.evaluate.report_generalization import starting_point

    part = starting_point(weights_source(config.model.model, config.model.weights, config.model.transfer))
    lines = ["### Starting point", "", part["text"], ""]
    if part["rows"]:
        lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in part["rows"]]
    create_markdown_artifact("\n".join(lines) + "\n", key="starting-point",
                             description=f"Where the weights of {config.run_dir} started")
