"""The ``tomoflow-sweep`` flow: a training-size sweep per starting point (see :mod:`tasks.sweep.analysis`).

Prepare once (the preset's settings), write the nested training subsets, then for each
starting point and size train and evaluate (subflows) on the same validation and test
splits, and summarise. Only wiring lives here.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.evaluate import evaluate_model
from flows.prepare import prepare_data
from flows.train import train_classifier
from tasks.infra.process_defaults import apply_process_defaults
from tasks.pipeline.layout import prepare_config
from tasks.sweep.plan import sweep_config, sweep_dir, sweep_runs
from tasks.sweep.steps import summarise_sweep, write_sweep_subsets


@flow(name="tomoflow-sweep", log_prints=True)
def run_sweep(data_root: str, output_root: str, fractions: list[float], weights: list[str],
              preset: str | None = "demo", overrides: dict[str, Any] | None = None,
              repeats: int = 1) -> dict[str, str]:
    """Train each starting point on nested subsets of the training patients and compare their test AUC.

    Args:
        data_root: Folder with the BCS-DBT CSVs and images.
        output_root: Root of the outputs; the sweep goes to ``sweep/`` under it.
        fractions: Shares of the training patients, e.g. [0.1, 0.25, 0.5, 1].
        weights: Starting points (none, imagenet, a state_dict file or a tomoflow run); the first is
            the reference of the paired differences.
        preset: The preset whose settings train and evaluate every model.
        overrides: Settings over the preset, by section (e.g. {"train": {"epochs": 2}}).
        repeats: Repeats of every (starting point, size): each draws its own nested subsets and
            initial seed.

    Returns:
        Paths of ``table`` (sweep.csv), ``markdown``, ``json`` (with the verdicts), ``plot`` (sweep.png)
        and ``page`` (index.html).
    """
    apply_process_defaults()  # log redaction and the environment defaults, in a deployment's run too
    cfg = sweep_config(data_root, output_root, preset, overrides)
    prepared = prepare_data(config=prepare_config(cfg))
    if repeats < 1:
        raise ValueError(f"repeats {repeats}: expected 1 or more")
    subsets = {r: write_sweep_subsets(prepared["manifest"], list(fractions), cfg.slices.seed, r) for r in range(repeats)}
    runs = []
    for run in sweep_runs(cfg, prepared["manifest"], subsets, list(weights)):
        trained = None
        if run.train is not None:
            trained = train_classifier.with_options(flow_run_name=run.name)(config=run.train)
        runs.append(run.record(evaluate_model.with_options(flow_run_name=f"{run.name} evaluate")(config=run.evaluate),
                               trained))
    return summarise_sweep(runs, str(sweep_dir(cfg)), cfg.evaluate.bootstrap, cfg.evaluate.ci, cfg.evaluate.seed)
