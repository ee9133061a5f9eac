"""Prefect tasks of the ``score-studies`` flow: thin wrappers over :mod:`tasks.score.run`.

Where a run's paths come from (its config, else the worker's environment) is :mod:`tasks.score.paths`.

No Prefect result cache: the work is cached per volume on content (:mod:`tasks.score.volumes`),
so a rerun, or a resumed killed run, scores only the volumes not scored before.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from tasks.core.score_config import ScoreConfig

# No Prefect cache (and so no hashing of large tables as task inputs): the per-volume cache is the cache.
_UNCACHED = {"cache_policy": NONE, "persist_result": False}


def score_slot(root: Path, deployed: bool) -> AbstractContextManager[object]:
    """A deployment's run queues on its output root's slot (as the pipeline's runs do); a CLI run does not."""
    from tasks.infra.output_slot import output_root_slot

    return output_root_slot(root.resolve(), get_run_logger()) if deployed else nullcontext()


@task(name="read-run-settings", **_UNCACHED)
def read_run_settings(cfg: ScoreConfig) -> dict[str, Any]:
    """The run's checkpoint (and its SHA-256), PNG and input sizes, and operating threshold."""
    from tasks.score.worklist import run_settings

    settings = run_settings(cfg.run_dir, threshold=cfg.threshold)
    get_run_logger().info("threshold %.3f: %s", settings["threshold"], settings["threshold_source"])
    return settings


@task(name="list-volumes", **_UNCACHED)
def list_volumes_task(cfg: ScoreConfig) -> tuple[pd.DataFrame, str]:
    """Every volume the file-paths CSVs list, else every DICOM found (identified from its header)."""
    from tasks.score.inputs import list_volumes

    volumes, source = list_volumes(cfg.data_root)
    get_run_logger().info("%d volumes listed by %s", len(volumes), source)
    return volumes, source


@task(name="score-volumes", **_UNCACHED)
def score_volumes_task(cfg: ScoreConfig, volumes: pd.DataFrame, settings: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every frame of every volume through the model, decoded on workers, cached per volume."""
    from tasks.score.run import score_frames

    return score_frames(cfg, volumes, settings)


@task(name="write-worklist", **_UNCACHED)
def write_worklist(cfg: ScoreConfig, volumes: pd.DataFrame, source: str, frames: pd.DataFrame, status: pd.DataFrame,
                   settings: dict[str, Any], seconds: float) -> dict[str, str]:
    """frame_scores.parquet, volumes.parquet, worklist.csv, worklist.html and score_summary.json."""
    import json
    from pathlib import Path

    from tasks.score.run import write_outputs

    paths = write_outputs(cfg, volumes, source, frames, status, settings, seconds)
    facts = json.loads(Path(paths["summary"]).read_text())
    create_markdown_artifact(
        f"Scored {facts['scored']} of {facts['listed']} volumes ({facts['reused']} reused, {facts['failed']} not "
        f"scored); {facts['flagged']} flagged at {facts['threshold']:.3f} ({facts['threshold_source']}).",
        key="score-summary", description=f"score-studies of {cfg.run_dir}")
    return paths
