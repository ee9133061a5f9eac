"""Prefect tasks of the ``tomoflow-sweep`` flow, over :mod:`tasks.sweep.analysis` and :mod:`tasks.sweep.verdict`.

The runs' plan (which models train and evaluate, into which folders) is :mod:`tasks.sweep.plan`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks.infra.caching import content_cache_key_fn
from tasks.infra.retry import retry_policy


@task(name="write-sweep-subsets", cache_key_fn=content_cache_key_fn(files=("manifest",)), persist_result=True,
      **retry_policy(retries=1, delay_seconds=1))
def write_sweep_subsets(manifest: str, fractions: list[float], seed: int, repeat: int = 0) -> dict[float, str]:
    """The nested, stratified training subsets of one repeat (seed + repeat), each as a manifest beside the full one."""
    import pandas as pd

    from tasks.sweep.analysis import nested_train_subsets, write_subset_manifest

    subsets = nested_train_subsets(pd.read_parquet(manifest), fractions, seed=seed + repeat)
    return {f: str(write_subset_manifest(manifest, patients, f, repeat)) for f, patients in subsets.items()}


def publish_sweep(paths: dict[str, str], out_dir: str) -> None:
    """The ``training-size-sweep`` artifact: the verdicts and table, linked to ``sweep/index.html``.

    The link is an HTTP address when the outputs are served (``tomoflow serve-outputs``,
    TOMOFLOW_OUTPUTS_URL), and then also a link artifact; otherwise the page's path.
    """
    from prefect.artifacts import create_link_artifact

    from tasks.infra.environment import outputs_url

    root = Path(out_dir).parent  # the sweep folder sits in the output root
    url = outputs_url(paths["page"], root)
    page = f"[sweep/index.html]({url})" if url else f"`{paths['page']}`"
    create_markdown_artifact(f"Page: {page}\n\n" + Path(paths["markdown"]).read_text(), key="training-size-sweep",
                             description=f"Image-level AUC against training patients ({Path(out_dir).name})")
    if url:
        create_link_artifact(url, link_text="training-size sweep (index.html)", key="training-size-sweep-page",
                             description="The sweep's page: verdicts, plot, table, learning curves, sources, overlap")


@task(name="summarise-sweep", **retry_policy(retries=1, delay_seconds=1))
def summarise_sweep(runs: list[dict[str, Any]], out_dir: str, bootstrap: int, ci: float, seed: int) -> dict[str, str]:
    """The sweep's table, pooled differences, verdicts and plot, and its ``training-size-sweep`` artifact."""
    from tasks.sweep.analysis import sweep_table
    from tasks.sweep.outputs import write_sweep_outputs
    from tasks.sweep.page import write_sweep_page
    from tasks.sweep.verdict import pooled_comparisons, size_verdicts

    table = sweep_table(runs)
    pooled = pooled_comparisons(runs, bootstrap, ci, seed)
    verdicts = size_verdicts(table, pooled["differences"], pooled["versus"])
    versus = [{"weights": w, "fraction": f, "roc_auc_minus_trivial": v["difference"], "low": v["low"],
               "high": v["high"], "repeats": v["repeats"]} for (w, f), v in pooled["versus"].items()]
    paths = write_sweep_outputs(out_dir, table, pooled["differences"], verdicts, trivial=pooled["trivial"],
                                extra={"versus_trivial": versus})
    paths["page"] = str(write_sweep_page(out_dir, table, pooled["differences"], verdicts, pooled["trivial"],
                                         paths["plot"]))
    publish_sweep(paths, out_dir)
    get_run_logger().info("sweep table: %s, plot: %s", paths["table"], paths["plot"])
    for v in verdicts:
        get_run_logger().info("%s", v["sentence"])
    return paths
