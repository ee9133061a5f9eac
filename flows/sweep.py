"""The ``tomoflow-sweep`` flow: a training-size sweep per starting point (see :mod:`tasks.sweep.analysis`).

Prepare once (the preset's settings), write the nested training subsets, then for each
starting point and size train and evaluate (subflows) on the same validation and test
splits, and summarise. Only wiring lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.evaluate import evaluate_model
from flows.prepare import prepare_data
from flows.train import train_classifier
from tasks.infra import runners as runtime
from tasks.core.config import PrepareConfig, TrainConfig
from tasks.sweep.analysis import weights_label
from tasks.sweep.steps import summarise_sweep, write_sweep_subsets


@flow(name="tomoflow-sweep", log_prints=True)
def run_sweep(data_root: str, output_root: str, fractions: list[float], weights: list[str],
              preset: str | None = "demo", overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """Train each starting point on nested subsets of the training patients and compare their test AUC.

    Args:
        data_root: Folder with the BCS-DBT CSVs and images.
        output_root: Root of the outputs; the sweep goes to ``sweep/`` under it.
        fractions: Shares of the training patients, e.g. [0.1, 0.25, 0.5, 1].
        weights: Starting points (none, imagenet, a state_dict file or a tomoflow run); the first is
            the reference of the paired differences.
        preset: The preset whose settings train and evaluate every model.
        overrides: Settings over the preset, by section (e.g. {"train": {"epochs": 2}}).

    Returns:
        Paths of ``table`` (sweep.csv), ``markdown``, ``json`` and ``plot`` (sweep.png).
    """
    from tasks.core.presets import _merge, load_preset, pipeline_config

    merged = _merge(load_preset(preset) if preset else {}, overrides or {})
    cfg = pipeline_config(data_root=data_root, output_root=output_root, base=merged)
    root = Path(cfg.data.output_dir).resolve()
    prepared = prepare_data(config=PrepareConfig(
        data=cfg.data.model_copy(update={"output_dir": str(runtime.prepared_dir(root, cfg))}), slices=cfg.slices,
        reports=cfg.reports))
    subsets = write_sweep_subsets(prepared["manifest"], list(fractions), cfg.slices.seed)
    runs = []
    for start in weights:
        for fraction, manifest in sorted(subsets.items()):
            run_dir = root / "sweep" / "runs" / f"{weights_label(start)}-f{round(fraction * 1000):04d}"
            train_classifier.with_options(flow_run_name=f"sweep {weights_label(start)} {fraction:g}")(
                config=TrainConfig(manifest=manifest, run_dir=str(run_dir),
                                   model=cfg.model.model_copy(update={"weights": start}), train=cfg.train,
                                   augment=cfg.augment))
            evaluated = evaluate_model(config=cfg.evaluate.model_copy(update={
                "run_dir": str(run_dir), "manifest": prepared["manifest"], "output_dir": str(run_dir / "evaluation")}))
            runs.append({"weights": start, "fraction": fraction, "manifest": manifest, "run_dir": str(run_dir),
                         "metrics": evaluated["metrics"], "predictions": evaluated["predictions"]})
    return summarise_sweep(runs, str(root / "sweep"), cfg.evaluate.bootstrap, cfg.evaluate.ci, cfg.evaluate.seed)
