"""The evaluation report: one self-contained HTML page, plus Prefect artifact contents.

:func:`write_report` writes ``report.html``: the study's three metrics (accuracy,
sensitivity, specificity) at the patient level with their confidence intervals, in plain
words; learning curves (loss and accuracy per epoch, training and validation, as in the
study's figures); ROC curves; confusion matrices; the metrics of every level with
intervals; sensitivity for benign and cancer separately; calibration; the cohort flow and
the leak audit of the prepared data; Grad-CAM examples; the configuration; and a note for
every metric that could not be computed. The page is the jinja2 template
``templates/report.html.j2`` (autoescaping on: every value from the data is escaped);
:mod:`tasks.evaluate.report_sections` and :mod:`tasks.evaluate.report_data` compute what each section shows
and :mod:`tasks.evaluate.report_figures` draws the figures (matplotlib, embedded as base64 PNGs):
the page loads nothing from anywhere, so it can be mailed, archived or opened offline.

The page shows pseudonymous BCS-DBT ids (``DBT-P00013``) and nothing else about a
patient: no names, dates of birth or report text are read or written here.

:func:`summary_markdown` and :func:`metrics_table` give the same figures for Prefect's
markdown and table artifacts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tasks.evaluate import report_data as data
from tasks.evaluate import report_generalization
from tasks.evaluate import report_sections as sections
from tasks.core.files import atomic_write_text
from tasks.evaluate.metrics_point import LEVELS, METRICS
from tasks.evaluate.report_format import METRIC_NAMES, UNIT, ci_label, fmt, fmt_ci, level_entry, n_resamples
from tasks.evaluate.report_sections import null_text
from tasks.evaluate.report_whole_volume import deployment_section

if TYPE_CHECKING:
    import jinja2

__all__ = [
    "METRIC_NAMES",
    "REPORT_NAME",
    "SECTION_HEADINGS",
    "metrics_table",
    "summary_markdown",
    "write_report",
]

REPORT_NAME = "report.html"

#: The report's sections: anchor -> heading, in page order.
SECTION_HEADINGS: dict[str, str] = {
    "deployment": "What a deployment would see: whole volumes",
    "summary": "Summary",
    "learning-curves": "Learning curves",
    "roc": "ROC curves",
    "confusion": "Confusion matrices",
    "metrics": "Metrics by level",
    "cohorts": "Sensitivity for benign and cancer",
    "calibration": "Calibration",
    "cohort-flow": "Cohort flow",
    "leak-audit": "Leak audit",
    "starting-point": "Starting point",
    "external": "External evaluation",
    "gradcam": "Grad-CAM examples",
    "undefined": "Notes on undefined metrics",
    "configuration": "Configuration",
}

TEMPLATE = "report.html.j2"


@cache
def _environment() -> jinja2.Environment:
    """The template environment: templates shipped as package data, autoescaping on for every file."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("tasks.evaluate", "templates"),
        autoescape=True,  # the template writes only data: escape it all, .html.j2 included
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails loudly instead of vanishing
        keep_trailing_newline=True,
    )


def render_report(context: Mapping[str, Any]) -> str:
    """The page's HTML from the values :func:`write_report` collects."""
    return _environment().get_template(TEMPLATE).render(**context)


def write_report(
    run_dir: str | os.PathLike[str],
    *,
    metrics: Mapping[str, Any],
    history: pd.DataFrame | None,
    cohort_summary: Mapping[str, Any] | None,
    config: Mapping[str, Any],
    predictions: pd.DataFrame | None,
    examples: Sequence[Mapping[str, Any]] = (),
    out_path: str | os.PathLike[str] | None = None,
    chance: Mapping[str, Any] | None = None,
    manifest: pd.DataFrame | None = None,
    generalization: Mapping[str, Any] | None = None,
) -> Path:
    """Write the evaluation report: one self-contained HTML page.

    Args:
        run_dir: The training run's folder (named in the title; the default output folder).
        metrics: :func:`tasks.evaluate.metrics.evaluate_predictions`' dict, optionally with
            ``localization`` (:func:`models.explain.gradcam.box_hit_fraction`'s dict) and
            ``occlusion`` (:func:`models.explain.gradcam.occlusion_check`'s dict).
        history: ``history.csv`` of the run (``epoch``, ``train_loss``, ``train_accuracy``,
            ``val_loss``, ``val_accuracy``), or ``None``.
        cohort_summary: ``cohort_summary.json`` of the prepared data, or ``None``.
        config: The configuration to show (e.g. ``{"train": ..., "evaluate": ...}``).
        predictions: The slice prediction table (for the ROC curves), or ``None``.
        examples: Grad-CAM examples (:func:`models.explain.gradcam.gradcam_examples`): dicts with
            ``kind`` (TP, FP, FN), ``image`` (``(H, W)`` uint8), ``heatmap`` (``(H, W)``
            float in [0, 1]), ``box`` (``(x, y, w, h)`` or ``None``), ``probability``,
            ``ids`` and optionally ``cohort`` and ``peak_in_box``.
        out_path: Where to write; default ``run_dir/report.html``.
        chance: :func:`tasks.evaluate.metrics.chance_losses` of the training run (``train``,
            ``validation``, ``class_balance``): the chance lines of the learning curves.
        manifest: The manifest the evaluated data came from: the cohort flow counts the
            patients, views and images it actually holds.
        generalization: ``weights_source`` (the checkpoint's), ``training_audit``
            (``training_audit.json``) and ``external`` (``external.json``); see
            :mod:`tasks.evaluate.report_generalization`.

    Returns:
        The path written (atomically).
    """
    run_dir = Path(run_dir)
    out = Path(out_path) if out_path is not None else run_dir / REPORT_NAME
    context = {
        "run": run_dir.name,
        "headings": SECTION_HEADINGS,
        "split_text": sections.split_text(metrics),
        "threshold": f"{metrics.get('threshold', 0.5):g}",
        "aggregate": metrics.get("aggregate", "max"),
        "ci": ci_label(metrics),
        "b": n_resamples(metrics),
        "deployment": deployment_section(metrics),
        "summary": sections.summary(metrics, config, (cohort_summary or {}).get("data_origin")),
        "curves": sections.learning_curves(history, chance),
        "roc": sections.roc(metrics, predictions),
        "confusion": sections.confusion(metrics),
        "by_level": sections.metrics_by_level(metrics),
        "cohorts": sections.cohorts(metrics),
        "levels": LEVELS,
        "calibration": sections.calibration(metrics),
        "flow": data.cohort_flow(cohort_summary, manifest),
        "audit": data.leak_audit(cohort_summary),
        "gradcam": data.gradcam(metrics, examples),
        "undefined": sections.undefined_notes(metrics),
        "settings": data.configuration(config, metrics),
        "generalization": report_generalization.sections(generalization),
    }
    return atomic_write_text(out, render_report(context))


def summary_markdown(metrics: Mapping[str, Any]) -> str:
    """Markdown for a Prefect artifact: a degenerate model named first, then the image and patient headlines."""
    ci = ci_label(metrics)
    lines = [f"### Evaluation on the {sections.split_text(metrics)}", ""]
    if metrics.get("degenerate"):
        lines += [f"**Degenerate model:** {metrics.get('degenerate_reason') or 'its predictions do not vary'}.", ""]
    lines += [
        f"Threshold {metrics.get('threshold', 0.5):g}, {metrics.get('aggregate', 'max')} of slice probabilities; "
        f"{ci} from {n_resamples(metrics)} patient bootstrap re-draws; \"random\" is the ROC AUC of the "
        "model's scores shuffled across images and aggregated the same way.",
    ]
    for level in ("slice", "patient"):
        entry = level_entry(metrics, level)
        lines += [
            "",
            f"Per {UNIT[level]} (n = {entry.get('n', 0)}: {entry.get('n_positive', 0)} with a tumour, "
            f"{entry.get('n_negative', 0)} without)",
            "",
            f"| Metric | Value | {ci} |",
            "|---|---:|---:|",
        ]
        for metric in ("accuracy", "sensitivity", "specificity", "roc_auc"):
            value = (entry.get("metrics") or {}).get(metric)
            interval = (entry.get("intervals") or {}).get(metric)
            shown = fmt(metric, value) if value is not None else "n/a"
            lines.append(f"| {METRIC_NAMES[metric][0]} | {shown} | {fmt_ci(metric, interval) or '–'} |")
        if null_text(entry):
            lines.append(f"| ROC AUC of random scores | {null_text(entry)} | |")
        trivial = ((metrics.get("trivial") or {}).get("levels") or {}).get(level) or {}
        if trivial.get("roc_auc") is not None:
            beats = {True: "beaten", False: "NOT beaten", None: "n/a"}[trivial.get("beats_trivial")]
            lines.append(f"| ROC AUC of the trivial score ({metrics['trivial'].get('score')}) | "
                         f"{trivial['roc_auc']:.3f} | {fmt_ci('roc_auc', trivial.get('roc_auc_interval')) or '–'} "
                         f"({beats}) |")
    lines += ["", "| Level | n | Accuracy | Sensitivity | Specificity | ROC AUC | random ROC AUC |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for level in LEVELS:
        e = level_entry(metrics, level)
        values = [fmt(m, (e.get("metrics") or {}).get(m)) for m in ("accuracy", "sensitivity", "specificity", "roc_auc")]
        null = e.get("null_roc_auc")
        values.append("n/a" if null is None else f"{null:.3f}")
        lines.append(f"| {level} | {e.get('n', 0)} | " + " | ".join(values) + " |")
    warnings = sections.null_warnings(metrics)
    if (metrics.get("trivial") or {}).get("note"):
        warnings = [*warnings, f"{metrics['trivial']['note']} ({metrics['trivial'].get('chosen_note', '')})"]
    if warnings:
        lines += ["", *[f"**Warning:** {w}" for w in warnings]]
    notes = [
        f"{level} {METRIC_NAMES.get(m, (m,))[0]}: {why}"
        for level in LEVELS
        for m, why in (level_entry(metrics, level).get("undefined") or {}).items()
    ]
    if notes:
        lines += ["", "**Undefined (shown as n/a):** " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def metrics_table(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows for a Prefect table artifact: one per level and metric.

    Returns:
        Dicts with ``level``, ``metric`` (:data:`~tasks.evaluate.metrics.METRICS`, then
        ``null_roc_auc`` (low and high: its 95% range; note: the warning when the model's
        interval overlaps it), then ``sensitivity_<cohort>`` for benign and cancer), ``value``, ``low``, ``high``
        (``None`` where undefined or not bootstrapped; rounded to 4 decimals), ``n`` (cases
        at the level; positives of the cohort for cohort rows) and ``note`` (why a value
        is missing, else empty).
    """
    rows: list[dict[str, Any]] = []

    def row(level: str, metric: str, value: Any, interval: Sequence[Any] | None, n: Any, note: Any) -> None:
        low, high = interval or (None, None)
        rows.append({"level": level, "metric": metric, "value": _round(value), "low": _round(low),
                     "high": _round(high), "n": int(n), "note": note})

    for level in LEVELS:
        e = level_entry(metrics, level)
        for metric in METRICS:
            row(level, metric, (e.get("metrics") or {}).get(metric), (e.get("intervals") or {}).get(metric),
                e.get("n", 0), (e.get("undefined") or {}).get(metric, ""))
        row(level, "null_roc_auc", e.get("null_roc_auc"), e.get("null_roc_auc_range"), e.get("n", 0),
            e.get("null_warning") or "")
        for cohort, sub in (e.get("by_cohort") or {}).items():
            row(level, f"sensitivity_{cohort}", sub.get("sensitivity"), (sub.get("intervals") or {}).get("sensitivity"),
                sub.get("n_positive", 0), (sub.get("undefined") or {}).get("sensitivity", ""))
    return rows
