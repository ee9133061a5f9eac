"""The pipeline's first step: everything a run needs, checked in seconds, before any data is touched.

An unattended run (the ``nightly`` schedule at 02:00) must not prepare data for an hour and
then fail on something that was knowable at once. :func:`preflight_problems` checks:

* the starting weights of the network (ImageNet weights in torchvision's cache on this worker);
* the data root (a folder holding the BCS-DBT CSVs) and the output root (writable here);
* when training is handed to a deployment (the GPU pool): that deployment exists, its work
  pool is not paused and has a worker online.

Each problem is one or two whole sentences; the fix it names depends on how the run was
started: a deployment run gets the deployment parameter (``config={"model":{"weights":"none"}}``),
a terminal run the command-line option. :func:`fit_sentences` joins them without ever
cutting a sentence (Prefect shows a state message on one line; ours stay under 600 characters).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from tasks.core.config import PipelineConfig
from tasks.infra.environment import ServiceConfigError

StartedBy = Literal["deployment", "cli"]

#: The longest state message we write (Prefect shows it on one line in the dashboard).
MESSAGE_LIMIT = 600

#: The deployment parameter that trains from scratch, exactly as ``prefect deployment run`` takes it.
SCRATCH_PARAM = """--param config='{"model":{"weights":"none"}}'"""


class PreflightError(ServiceConfigError):
    """A run cannot succeed as configured; the message lists what to change, in whole sentences."""


def fit_sentences(sentences: list[str], limit: int = MESSAGE_LIMIT) -> str:
    """Join whole sentences up to ``limit`` characters; the ones left out are counted, never cut.

    Args:
        sentences: Each a complete sentence (or a few), ending with a full stop.
        limit: The most characters of the result.

    Returns:
        The sentences on one line; when some do not fit, a last sentence says how many
        problems more the run's log lists.
    """
    flat = [" ".join(s.split()) for s in sentences if s and s.strip()]
    out: list[str] = []
    for i, sentence in enumerate(flat):
        left = len(flat) - i - 1
        tail = f" {left} more problem{'s' if left != 1 else ''} in the run's log." if left else ""
        candidate = " ".join([*out, sentence])
        if len(candidate + tail) <= limit:
            out.append(sentence)
            continue
        rest = len(flat) - i
        more = f"{rest} more problem{'s' if rest != 1 else ''} in the run's log."
        while out and len(" ".join([*out, more])) > limit:
            out.pop()
            rest += 1
            more = f"{rest} more problems in the run's log."
        if not out:  # one sentence longer than the limit: keep its first words, end it visibly
            words, text = sentence.split(" "), ""
            for word in words:
                if len(f"{text} {word} (...).".strip()) > limit:
                    break
                text = f"{text} {word}".strip()
            return f"{text} (...)."
        return " ".join([*out, more])
    return " ".join(out)


def weights_problem(cfg: PipelineConfig, started_by: StartedBy) -> str | None:
    """Whether the network's starting weights are on this worker; None when they are (or none are wanted)."""
    from models.weights.resolve import WeightsNotFoundError, resolve_weights
    from models.weights.resolve import imagenet_weights_file

    model = cfg.model.model
    try:
        resolve_weights(model, cfg.model.weights)
        return None
    except WeightsNotFoundError:
        path = imagenet_weights_file(model)
        fix = (f"run it with {SCRATCH_PARAM} to train from scratch (or set that config on the deployment)"
               if started_by == "deployment" else
               "pass --weights none to train from scratch (tomoflow train), or a preset that falls back to "
               "scratch (--preset demo)")
        return (f"ImageNet weights for {model} are not on this worker: {path.name} is missing from {path.parent}. "
                f"Copy that file there (tomoflow never downloads during a run), or {fix}.")
    except FileNotFoundError:
        where = "the deployment's config model.weights" if started_by == "deployment" else "--weights"
        return (f"The weights file {cfg.model.weights} does not exist on this worker. Fix {where}, or use "
                f"{SCRATCH_PARAM if started_by == 'deployment' else '--weights none'} to train from scratch.")
    except ValueError as exc:
        return " ".join(str(exc).split()).rstrip(".") + "."


def data_root_problem(data_root: str, started_by: StartedBy) -> str | None:
    """The data root must hold the BCS-DBT CSVs (found the way ``prepare`` finds them)."""
    from tasks.prepare.bcs_csv import find_bcs_csvs

    how = "--param data_root=DIR or TOMOFLOW_DATA_ROOT" if started_by == "deployment" else "--data-root"
    if not Path(data_root).is_dir():
        return f"The data root {data_root} is not a folder on this worker. Point {how} at the BCS-DBT folder."
    try:
        find_bcs_csvs(data_root, require_labels=False)
    except ValueError:
        return (f"The data root {data_root} holds no BCS-DBT file-paths CSV (e.g. 'BCS-DBT file-paths-train-v2.csv'). "
                f"Point {how} at the folder with the CSVs and Breast-Cancer-Screening-DBT/.")
    except OSError as exc:
        return f"The data root {data_root} cannot be read ({type(exc).__name__}). Check the folder and its permissions."
    return None


def output_root_problem(output_root: str) -> str | None:
    """The output root must be a folder this worker can create and write."""
    root = Path(output_root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".preflight-"):
            pass
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        return (f"The output root {output_root} cannot be written by this worker ({reason}). "
                f"Create it with write access for the worker's user, or choose another folder.")
    return None


def training_pool_problem(deployment: str, client: Any) -> str | None:
    """Training goes to ``deployment``: it must exist and its work pool must have a worker online.

    Args:
        deployment: ``flow-name/deployment-name``.
        client: A synchronous Prefect client.
    """
    from prefect.exceptions import ObjectNotFound

    try:
        dep = client.read_deployment_by_name(deployment)
    except ObjectNotFound:
        return (f"The training deployment {deployment} does not exist on this Prefect server. "
                f"Create it with 'prefect --no-prompt deploy --all' from the checkout.")
    pool_name = dep.work_pool_name
    if not pool_name:
        return None
    try:
        pool = client.read_work_pool(pool_name)
    except ObjectNotFound:
        return (f"The work pool {pool_name} of {deployment} does not exist. "
                f"Create it with 'prefect work-pool create {pool_name} --type process'.")
    status = str(getattr(pool.status, "value", pool.status) or "").upper()
    if pool.is_paused or status == "PAUSED":
        return f"The work pool {pool_name} (training) is paused. Resume it with 'prefect work-pool resume {pool_name}'."
    if status != "READY":
        return (f"No worker of the work pool {pool_name} is online, so training ({deployment}) would wait forever. "
                f"Start one on the GPU machine: 'systemctl start tomoflow-worker@{pool_name}' "
                f"(or 'prefect worker start --pool {pool_name}').")
    return None


def preflight_problems(cfg: PipelineConfig, started_by: StartedBy, client: Any | None = None) -> list[str]:
    """Every problem that would stop this run later, as whole sentences; empty when it can go.

    Args:
        cfg: The run's resolved configuration (after the scratch fall-back).
        started_by: ``deployment`` (the fix names the deployment parameter) or ``cli``.
        client: A synchronous Prefect client; needed only when training goes to a deployment.
    """
    problems = [weights_problem(cfg, started_by), data_root_problem(cfg.data.data_root, started_by),
                output_root_problem(cfg.data.output_dir)]
    if cfg.train_deployment and client is not None:
        problems.append(training_pool_problem(cfg.train_deployment, client))
    return [p for p in problems if p]


def preflight_message(problems: list[str]) -> str:
    """The run's failure message: what the first step found, in whole sentences under the limit."""
    lead = f"Preflight found {len(problems)} problem{'s' if len(problems) != 1 else ''} before any work:"
    return fit_sentences([f"{lead} {problems[0]}", *problems[1:]])
