"""What the pipeline shows on its own flow run in the Prefect dashboard.

The operator opens the pipeline run and reads, without going a subflow down: the study's
three measures (accuracy, sensitivity, specificity) with their bootstrap intervals and the
ROC AUC, the learning curves as an image, and a link to ``report.html`` that a browser
opens (``http://`` under ``TOMOFLOW_OUTPUTS_URL``: the output root served over HTTP; a
browser refuses ``file://`` links from a web page).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Mapping

from tasks.core.files import atomic_write_bytes


def learning_curves_png(history_csv: str | Path, out_path: str | Path) -> Path | None:
    """The report's learning-curve figure (loss and accuracy per epoch) as a small PNG.

    Args:
        history_csv: The training run's ``history.csv``.
        out_path: Where the PNG goes (written atomically).

    Returns:
        The PNG's path, or None when the history is missing, empty or lacks a column.
    """
    import pandas as pd

    from tasks.evaluate.report_figures import CURVE_COLUMNS, draw_learning_curves, png_bytes

    path = Path(history_csv)
    if not path.is_file():
        return None
    h = pd.read_csv(path)
    if h.empty or not set(CURVE_COLUMNS) <= set(h.columns):
        return None
    fig, _ = draw_learning_curves(h.sort_values("epoch"), {})
    return atomic_write_bytes(Path(out_path), png_bytes(fig, dpi=80))


def pipeline_summary_markdown(metrics: Mapping[str, Any], *, run_name: str, report_url: str | None,
                              report_path: str, curves_url: str | None, curves_png: Path | None,
                              note: str | None = None) -> str:
    """The pipeline run's ``pipeline-summary`` artifact.

    Args:
        metrics: ``metrics.json`` of the evaluation.
        run_name: The flow run's name (the heading).
        report_url: ``http://`` address of the report, or None when the outputs are not served.
        report_path: The report's path on the worker (always shown).
        curves_url: ``http://`` address of the learning-curve PNG, or None.
        curves_png: The PNG itself, embedded as a data URI when there is no address.
        note: A note to show first (e.g. trained from scratch).
    """
    from tasks.evaluate.report import summary_markdown

    lines = [f"# {run_name}", ""]
    if note:
        lines += [f"> {note}", ""]
    if report_url:
        lines += [f"**Full report:** [report.html]({report_url})", ""]
    else:
        lines += [f"**Full report:** `{report_path}` (set TOMOFLOW_OUTPUTS_URL where the output root is served "
                  "over HTTP to get a link here; see docs/service.md)", ""]
    lines += [summary_markdown(metrics), ""]
    if curves_url:
        lines += ["### Learning curves", "", f"![learning curves]({curves_url})", ""]
    elif curves_png is not None:
        data = base64.b64encode(Path(curves_png).read_bytes()).decode()
        lines += ["### Learning curves", "", f"![learning curves](data:image/png;base64,{data})", ""]
    return "\n".join(lines)
