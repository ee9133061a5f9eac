"""score-studies' paths: the run folder, the studies and the output folder, from the run's config or the worker's environment.

A scheduled run of the ``score-new`` deployment has no parameters: each path left empty
comes from the worker's environment (:data:`RUN_VAR`, :data:`SCORE_DATA_VAR` else
``TOMOFLOW_DATA_ROOT``, ``TOMOFLOW_OUTPUT_ROOT``).
"""

from __future__ import annotations

import os
from pathlib import Path

from tasks.core.score_config import ScoreConfig

#: Environment variables a scheduled run takes its run folder and studies folder from.
RUN_VAR = "TOMOFLOW_SCORE_RUN"
SCORE_DATA_VAR = "TOMOFLOW_SCORE_DATA_ROOT"


def settled_score_config(cfg: ScoreConfig) -> tuple[ScoreConfig, Path, bool]:
    """``(config with every path set, the output root its runs queue on, started by a deployment)``.

    Paths left empty come from the worker's environment (a scheduled run has no parameters).

    Raises:
        ServiceConfigError: A path is missing, relative in a deployment, or not a folder (one line).
    """
    from tasks.infra.environment import DATA_VAR, OUTPUT_VAR, deployment_id, resolve_root

    deployed = deployment_id() is not None
    run = resolve_root(cfg.run_dir, RUN_VAR, "run_dir", "training run folder", must_exist=True, deployment=deployed)
    data_var = SCORE_DATA_VAR if cfg.data_root or os.environ.get(SCORE_DATA_VAR) else DATA_VAR
    data = resolve_root(cfg.data_root, data_var, "data_root", "folder of studies to score", must_exist=True,
                        deployment=deployed)
    if cfg.output_dir:
        out = resolve_root(cfg.output_dir, OUTPUT_VAR, "output_dir", "output folder", must_exist=False,
                           deployment=deployed)
        root = Path(out)
    else:
        root = Path(resolve_root(None, OUTPUT_VAR, "output_dir", "output root", must_exist=False,
                                 deployment=deployed))
        out = str(root / "scores")
    return cfg.model_copy(update={"run_dir": run, "data_root": data, "output_dir": out}), root, deployed
