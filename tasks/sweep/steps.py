"""Prefect tasks of the ``tomoflow-sweep`` flow: thin wrappers over :mod:`tasks.sweep.analysis`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks.infra.caching import content_cache_key_fn
from tasks.infra.retry import retry_policy


@task(name="write-sweep-subsets", cache_key_fn=content_cache_key_fn(files=("manifest",)), persist_result=True,
      **retry_policy(retries=1, delay_seconds=1))
def write_sweep_subsets(manifest: str, fractions: list[float], seed: int) -> dict[float, str]:
    """The nested, stratified training subsets, each as a manifest beside the full one."""
    import pandas as pd

    from tasks.sweep.analysis import nested_train_subsets, write_subset_manifest

    subsets = nested_train_subsets(pd.read_parquet(manifest), fractions, seed=seed)
    return {f: str(write_subset_manifest(manifest, patients, f)) for f, patients in subsets.items()}


@task(name="summarise-sweep", **retry_policy(retries=1, delay_seconds=1))
def summarise_sweep(runs: list[dict[str, Any]], out_dir: str, bootstrap: int, ci: float, seed: int) -> dict[str, str]:
    """The sweep's table, paired differences and plot, and its ``training-size-sweep`` artifact."""
    from tasks.sweep.analysis import sweep_differences, sweep_table, write_sweep_outputs

    table = sweep_table(runs)
    differences = sweep_differences(runs, n=bootstrap, ci=ci, seed=seed)
    paths = write_sweep_outputs(out_dir, table, differences)
    create_markdown_artifact(Path(paths["markdown"]).read_text(), key="training-size-sweep",
                             description=f"Image-level AUC against training patients ({out_dir})")
    get_run_logger().info("sweep table: %s, plot: %s", paths["table"], paths["plot"])
    return paths
