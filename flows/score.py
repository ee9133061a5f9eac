"""The ``score-studies`` flow: a trained run over every frame of new studies, and the worklist.

The tasks live in :mod:`tasks.score.steps`; this module only calls them in order. The
``score-new`` deployment (prefect.yaml) runs it on a schedule with paths from the worker's
environment (:func:`tasks.score.paths.settled_score_config`), queued per output root like the
pipeline's runs.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow

from tasks.core.files import output_lock
from tasks.core.score_config import ScoreConfig
from tasks.infra.lifecycle import cancellable
from tasks.infra.process_defaults import apply_process_defaults
from tasks.score.paths import settled_score_config
from tasks.score.steps import (
    list_volumes_task,
    read_run_settings,
    score_slot,
    score_volumes_task,
    write_worklist,
)


@flow(name="score-studies", flow_run_name="score new studies", log_prints=True)
def score_studies(config: ScoreConfig = ScoreConfig()) -> dict[str, str]:
    """Score every frame of every volume under ``config.data_root`` with the run; write the worklist.

    Args:
        config: The run, the studies' folder, the output folder, stride, top-k, threshold override
            (paths left empty come from the worker's TOMOFLOW_SCORE_RUN, TOMOFLOW_SCORE_DATA_ROOT or
            TOMOFLOW_DATA_ROOT, and TOMOFLOW_OUTPUT_ROOT/scores).

    Returns:
        Paths of ``frame_scores``, ``volumes``, ``worklist_csv``, ``worklist_html`` and ``summary``.
    """
    apply_process_defaults()  # log redaction and the environment defaults, in a deployment's run too
    config, slot_root, deployed = settled_score_config(config)
    out = Path(str(config.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    with score_slot(slot_root, deployed), output_lock(out, what="score-studies"):
        return cancellable(_score, config, out=out, flow="score-studies")


def _score(config: ScoreConfig) -> dict[str, str]:
    start = time.perf_counter()
    settings = read_run_settings(config)
    volumes, source = list_volumes_task(config)
    frames, status = score_volumes_task(config, volumes, settings)
    return write_worklist(config, volumes, source, frames, status, settings, time.perf_counter() - start)
