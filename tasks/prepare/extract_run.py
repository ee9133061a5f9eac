"""Running the ``extract-shard`` tasks of the ``prepare-data`` flow on the configured runner.

Which runner (process pool, Dask, this process) is :func:`tasks.infra.runners.task_runner`'s
choice; this module submits the shards, skips volumes already extracted with the same
inputs, and reports progress in the UI (a progress artifact) and at a terminal (rich).
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from tasks.infra import lifecycle
from tasks.core.config import PrepareConfig
from tasks.prepare.extract import SERIAL_BELOW_SECONDS, balanced_shards, estimated_seconds, split_finished
from tasks.prepare.steps import extract_shard_task
from tasks.infra.runners import task_runner, workers_see_ephemeral_api


def run_extraction(jobs: list[dict[str, Any]], config: PrepareConfig) -> list[str]:
    """Run the extraction shards on the configured runner, with progress in the UI and terminal."""
    from rich.progress import Progress

    logger = get_run_logger()
    out = config.data.output_dir
    s = config.slices
    extra = tuple(config.data.extra_data_roots)
    finished, todo = split_finished(jobs, data_root=config.data.data_root, out_dir=out, image_size=s.image_size,
                                    seed=s.seed, full_resolution=s.full_resolution, extra_roots=extra)
    if not todo:
        logger.info("extraction: all %d volumes already extracted with the same inputs", len(jobs))
        create_progress_artifact(100.0, key="extraction-progress",
                                 description=f"Extraction of {len(jobs)} volumes: nothing to do")
        return finished
    shards = balanced_shards(todo, s.shard_size)
    params = [{"jobs": shard, "data_root": config.data.data_root, "out_dir": out,
               "image_size": s.image_size, "seed": s.seed, "full_resolution": s.full_resolution,
               "extra_roots": extra}
              for shard in shards]
    artifact = create_progress_artifact(
        100.0 * len(finished) / len(jobs), key="extraction-progress",
        description=f"Extraction of {len(todo)} of {len(jobs)} volumes in {len(shards)} shards")
    records: list[str] = list(finished)
    decoded = processed = 0
    runner = task_runner(config)
    if runner is not None and s.executor == "process":
        seconds = estimated_seconds(todo, data_root=config.data.data_root, image_size=s.image_size,
                                    full_resolution=s.full_resolution, extra_roots=extra)
        if seconds < SERIAL_BELOW_SECONDS:
            # Starting worker processes (each imports Prefect and the tasks) costs more
            # than this plan's whole decode: run it here.
            logger.info("extraction: %d volumes, about %.1f s of decoding: run in this process, "
                        "no worker pool", len(todo), seconds)
            runner = None
    bar = Progress(disable=not sys.stderr.isatty(), transient=False)
    with workers_see_ephemeral_api(), bar, (runner if runner is not None else nullcontext()):
        bar_task = bar.add_task("extracting volumes", total=len(todo))
        if runner is None:
            results = (extract_shard_task(**p) for p in params)
        else:
            futures = [runner.submit(extract_shard_task, p) for p in params]
            results = (f.result() for f in futures)
        try:
            for shard, result in zip(shards, results):
                records.extend(result["records"])
                decoded += result["decoded"]
                bar.advance(bar_task, len(shard))
                # Volumes finished by earlier runs count: a resumed run's bar does not drop back.
                processed += len(shard)
                update_progress_artifact(artifact, 100.0 * (len(finished) + processed) / len(jobs))
        except BaseException as exc:
            if not isinstance(exc, Exception):  # SIGTERM, Ctrl-C: the runner would wait for shards in flight
                lifecycle.stop_workers()
            raise
    logger.info("extraction: %d volumes, %d extracted now, %d reused from earlier runs",
                len(jobs), decoded, len(jobs) - decoded)
    return records
