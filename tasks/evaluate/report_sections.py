"""What each section of ``report.html`` shows: plain values for ``templates/report.html.j2``.

One function per section turns ``metrics.json`` (and the history, cohort summary, manifest,
configuration, Grad-CAM examples) into a dict of numbers and already formatted plain text.
No HTML is written here: the template holds the markup and escapes every value, so text
from the data (ids, reasons, file names) can never inject markup. The figures come from
:mod:`tasks.evaluate.report_figures`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tasks.evaluate import report_figures as figures
from tasks.evaluate.metrics_point import LEVELS, METRICS
from tasks.core.schema import POSITIVE_COHORTS
from tasks.core.weights_setting import WeightsSetting
from tasks.evaluate.report_format import (
    LEVEL_TEXT,
    METRIC_NAMES,
    UNIT,
    ci_label,
    fmt,
    fmt_ci,
    interval_of,
    level_entry,
    n_resamples,
)


_MODEL_NAMES = {"vgg16": "VGG16", "vgg16_bn": "VGG16 with batch normalisation (vgg16_bn)",
                "inception_v3": "Inception v3", "resnet18": "ResNet-18"}


# --------------------------------------------------------------------------------------
# Formatting (plain text)
# --------------------------------------------------------------------------------------


def split_text(metrics: Mapping[str, Any]) -> str:
    splits = [str(s) for s in metrics.get("splits") or []]
    if not splits:
        return "evaluation set"
    if len(splits) == 1:
        return f"{splits[0]} split"
    return ", ".join(splits[:-1]) + f" and {splits[-1]} splits"


def null_text(entry: Mapping[str, Any]) -> str:
    """``"0.726 (95% range 0.51–0.90)"``: the ROC AUC random scores reach at a level, or ``""``."""
    null = entry.get("null_roc_auc")
    if null is None:
        return ""
    span = entry.get("null_roc_auc_range")
    return f"{null:.3f}" + (f" (95% range {span[0]:.3f}–{span[1]:.3f})" if span else "")


def _no_interval_reason(entry: Mapping[str, Any], level: str) -> str:
    """Why an AUC as high as 1.000 is still not shown to beat chance: too few positives for an interval.

    Only when there is no interval and random scores reach the model's AUC (with a handful of
    tumour cases a shuffle often ranks them all first); otherwise the warning says enough.
    """
    if (entry.get("intervals") or {}).get("roc_auc"):
        return ""
    auc = (entry.get("metrics") or {}).get("roc_auc")
    top = (entry.get("null_roc_auc_range") or [None, None])[1]
    pos, neg = entry.get("n_positive"), entry.get("n_negative")
    if None in (auc, top, pos, neg) or top < auc - 1e-9:
        return ""
    return (f", because {pos} tumour and {neg} normal {UNIT[level]}s are too few positives for an interval "
            f"and random scores reach {top:.3f} too")


def null_warnings(metrics: Mapping[str, Any]) -> list[str]:
    """One warning per level whose ROC AUC interval reaches what random scores get."""
    out = []
    for level in LEVELS:
        entry = level_entry(metrics, level)
        if entry.get("better_than_null") is False:
            out.append(
                f"Per {UNIT[level]}, the ROC AUC ({fmt('roc_auc', (entry.get('metrics') or {}).get('roc_auc'))}"
                + (f", {ci_label(metrics)} {fmt_ci('roc_auc', (entry.get('intervals') or {}).get('roc_auc'))}"
                   if (entry.get("intervals") or {}).get("roc_auc") else "")
                + ") overlaps what random scores aggregated the same way reach (mean "
                + null_text(entry).replace(" (", ", ", 1).rstrip(")")
                + "): at this level the model is not shown to be better than chance"
                + _no_interval_reason(entry, level) + "."
            )
    return out


# --------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------


def _card(metrics: Mapping[str, Any], metric: str, detail: str, level: str) -> dict[str, Any]:
    entry = level_entry(metrics, level)
    value = (entry.get("metrics") or {}).get(metric)
    interval, wilson = interval_of(entry, metric, float(metrics.get("ci", 0.95)))
    return {
        "name": METRIC_NAMES[metric][0],
        "unit": UNIT[level],
        "value": None if value is None else fmt(metric, value),
        "why": (entry.get("undefined") or {}).get(metric),
        "interval": fmt_ci(metric, interval) + (" (Wilson)" if wilson and interval else ""),
        "detail": detail,
        "null_text": null_text(entry) if metric == "roc_auc" else "",
        "not_better": entry.get("better_than_null") is False,
    }


def _level_cards(metrics: Mapping[str, Any], level: str) -> list[dict[str, Any]]:
    entry = level_entry(metrics, level)
    c = entry.get("confusion") or {}
    unit = UNIT[level]
    n, n_pos, n_neg = entry.get("n", 0), entry.get("n_positive", 0), entry.get("n_negative", 0)
    tp, tn = c.get("tp", 0), c.get("tn", 0)
    with_tumour = f"{unit}s with a tumour" if level == "patient" else f"tumour {unit}s"
    without = f"{unit}s without a tumour" if level == "patient" else f"normal {unit}s"
    return [
        _card(metrics, "accuracy", f"{tp + tn} of {n} {unit}s classified correctly", level),
        _card(metrics, "sensitivity", f"{tp} of {n_pos} {with_tumour} were flagged", level),
        _card(metrics, "specificity", f"{tn} of {n_neg} {without} were cleared", level),
        _card(metrics, "roc_auc", "does not depend on the threshold", level),
    ]


def trivial_summary(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """The trivial-score baseline beside the model's AUC, per image and per patient, as plain text."""
    trivial = metrics.get("trivial") or {}
    levels = trivial.get("levels") or {}
    if not levels:
        return None
    lines = []
    for level in ("slice", "patient"):
        e = levels.get(level) or {}
        if e.get("roc_auc") is None or e.get("model_roc_auc") is None:
            continue
        own = fmt_ci("roc_auc", e.get("roc_auc_interval"))
        diff = e.get("model_minus_trivial")
        diff_ci = fmt_ci("roc_auc", e.get("difference_interval"))
        verdict = {True: "the model beats it", False: "the model does NOT beat it", None: "not decidable"}[
            e.get("beats_trivial")]
        lines.append(f"per {UNIT[level]}: trivial score ROC AUC {e['roc_auc']:.3f}" + (f" ({own})" if own else "")
                     + f" vs the model's {e['model_roc_auc']:.3f}; difference {diff:+.3f}"
                     + (f" (paired interval {diff_ci})" if diff_ci else "") + f": {verdict}")
    return {"score": trivial.get("score", ""), "chosen": trivial.get("chosen_note", ""), "lines": lines,
            "beaten": trivial.get("beats_trivial"), "note": trivial.get("note")}


def origin_text(origin: Mapping[str, Any] | None) -> str | None:
    """``"synthetic (tomoflow synth, difficulty moderate)"`` for a generated collection, else ``None``."""
    if not origin or not origin.get("synthetic"):
        return None
    level = origin.get("difficulty")
    return "synthetic (generated by tomoflow synth" + (f", lesion difficulty {level}" if level else "") + ")"


def summary(metrics: Mapping[str, Any], config: Mapping[str, Any],
            origin: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The summary: the evaluated set, per-image and per-patient cards, intervals, the model, its floors."""
    level = level_entry(metrics, "patient")
    c = level.get("confusion") or {}
    threshold = metrics.get("threshold", 0.5)
    rule = (
        f"its highest slice probability is at least {threshold:g}"
        if metrics.get("aggregate", "max") == "max"
        else f"the mean of its slice probabilities is at least {threshold:g}"
    )
    undefined = level.get("undefined") or {}
    return {
        "degenerate": (metrics.get("degenerate_reason") or "its predictions do not vary")
        if metrics.get("degenerate") else None,
        "n": level.get("n", 0), "n_pos": level.get("n_positive", 0), "n_neg": level.get("n_negative", 0),
        "n_views": level_entry(metrics, "volume").get("n", 0),
        "n_images": level_entry(metrics, "slice").get("n", 0),
        "rule": rule,
        "slice_cards": _level_cards(metrics, "slice"),
        "patient_cards": _level_cards(metrics, "patient"),
        "null_draws": (metrics.get("null") or {}).get("draws", 200),
        "warnings": null_warnings(metrics),
        "patient_auc": (level.get("metrics") or {}).get("roc_auc") is not None,
        "fp": c.get("fp", 0), "fn": c.get("fn", 0),
        "ci_percent": round(100 * float(metrics.get("ci", 0.95))),
        "undefined": [(METRIC_NAMES[m][0].lower(), undefined[m])
                      for m in ("accuracy", "sensitivity", "specificity") if m in undefined],
        "image_level": image_level(metrics),
        "training": training(config),
        "trivial": trivial_summary(metrics),
        "origin": origin_text(origin),
    }


def image_level(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """The per-image figures in one sentence (an image is scored on its own, the study's unit)."""
    level = level_entry(metrics, "slice")
    values = level.get("metrics") or {}
    if not level.get("n"):
        return None
    shown = [f"{METRIC_NAMES[m][0] if m != 'roc_auc' else 'ROC AUC'} {fmt(m, values.get(m))}"
             for m in ("roc_auc", "accuracy", "sensitivity", "specificity")]
    return {"n": level.get("n", 0), "n_pos": level.get("n_positive", 0), "shown": ", ".join(shown)}


def _config_value(config: Mapping[str, Any], *paths: Sequence[str]) -> Any:
    for path in paths:
        node: Any = config
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        if node is not None and not isinstance(node, Mapping):
            return node
    return None


def training(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """Which network, which starting weights (``start``: scratch, imagenet or file) and which optimiser."""
    arch = _config_value(config, ("model", "model"), ("train", "model", "model"))
    if not arch:
        return None
    weights = _config_value(config, ("model", "weights"), ("train", "model", "weights"))
    try:
        kind = WeightsSetting.verify(weights).kind
    except ValueError:  # a setting recorded before the parser refused it: the report shows it as written
        kind = "file"
    start = {"none": "scratch", "imagenet": "imagenet"}.get(kind, "file")
    # The evaluate flow passes {"train": TrainConfig}, a pipeline {"train": TrainParams}.
    section = config.get("train") or {}
    train = section["train"] if isinstance(section.get("train"), Mapping) else section
    optimizer = str(train.get("optimizer", "")).lower()
    how = []
    if optimizer == "sgd":
        how.append(f"SGD with momentum {train.get('momentum', 0.9):g}")
    elif optimizer == "adam":
        how.append("Adam")
    if train.get("lr") is not None:
        factor = float(train.get("backbone_lr_factor") or 1)
        how.append(f"learning rate {train['lr']:g}" + (
            f" (backbone {train['lr'] * factor:g})" if factor != 1 else ""))
    if train.get("batch_size"):
        how.append(f"batches of {train['batch_size']}")
    if train.get("epochs"):
        how.append(f"at most {train['epochs']} epochs")
    if train.get("image_size"):
        how.append(f"{train['image_size']} px inputs")
    if train.get("recalibrate_bn"):
        how.append("BatchNorm statistics re-estimated on the training images before each validation")
    return {"name": _MODEL_NAMES.get(str(arch), str(arch)), "start": start, "weights": weights,
            "how": ", ".join(how)}


# --------------------------------------------------------------------------------------
# Figures with their captions
# --------------------------------------------------------------------------------------


def learning_curves(history: pd.DataFrame | None, chance: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The learning-curve figure and caption parts, or ``None`` without a usable history."""
    needed = {"epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy"}
    if history is None or history.empty or not needed <= set(history.columns):
        return None
    chance = chance or {}
    out = figures.learning_curves_figure(history.sort_values("epoch"), chance)
    out["balance"] = chance.get("class_balance") or "as configured"
    out["chance_text"] = "; ".join(out["chance_notes"])
    out["off_scale_text"] = "; ".join(out["off_scale"])
    out["top_text"] = "" if out["top"] is None else f"{out['top']:.3g}"
    return out


def roc(metrics: Mapping[str, Any], predictions: pd.DataFrame | None) -> dict[str, Any] | None:
    """The ROC figure and the levels without a curve, or ``None`` without predictions."""
    if predictions is None or predictions.empty:
        return None
    out = figures.roc_figure(metrics, predictions, metrics.get("levels") or {})
    out["how"] = metrics.get("aggregate", "max")
    return out


def confusion(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The confusion matrices (figure) and their counts (table rows)."""
    grids, rows = [], []
    for level in LEVELS:
        c = level_entry(metrics, level).get("confusion") or {}
        grids.append((level, np.array([[c.get("tn", 0), c.get("fp", 0)], [c.get("fn", 0), c.get("tp", 0)]],
                                      dtype=float)))
        rows.append([level, c.get("tp", 0), c.get("fn", 0), c.get("fp", 0), c.get("tn", 0)])
    return {"src": figures.confusion_figure(grids), "rows": rows}


def calibration(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The Brier score per level (table rows) and the reliability diagram."""
    rows, cals = [], []
    for level in LEVELS:
        cal = level_entry(metrics, level).get("calibration") or {}
        brier = fmt("brier", cal.get("brier"))
        rows.append([level, brier, sum(b["count"] for b in cal.get("bins") or [])])
        cals.append((level, cal, brier))
    return {"rows": rows, "src": figures.calibration_figure(cals),
            "n_bins": (level_entry(metrics, "slice").get("calibration") or {}).get("n_bins", "")}


# --------------------------------------------------------------------------------------
# Tables of metrics
# --------------------------------------------------------------------------------------


def metrics_by_level(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Every metric at every level: cells (value, interval, footnote number), the random-score row, notes."""
    footnotes: list[str] = []

    def cell(level: str, metric: str) -> dict[str, Any]:
        entry = level_entry(metrics, level)
        value = (entry.get("metrics") or {}).get(metric)
        if value is None:
            reason = (entry.get("undefined") or {}).get(metric, "not computed")
            footnotes.append(f"{level} {METRIC_NAMES[metric][0]}: {reason}")
            return {"footnote": len(footnotes), "value": None, "interval": ""}
        interval, wilson = interval_of(entry, metric, float(metrics.get("ci", 0.95)))
        return {"footnote": None, "value": fmt(metric, value),
                "interval": fmt_ci(metric, interval) + (" (Wilson)" if wilson and interval else "")}

    def null_cell(level: str) -> dict[str, Any]:
        entry = level_entry(metrics, level)
        null, span = entry.get("null_roc_auc"), entry.get("null_roc_auc_range")
        return {"value": None if null is None else f"{null:.3f}",
                "span": f"{span[0]:.3f}–{span[1]:.3f}" if null is not None and span else "",
                "better": entry.get("better_than_null")}

    counts = [level_entry(metrics, lvl) for lvl in LEVELS]
    rows = []
    for metric in METRICS:
        rows.append({"name": METRIC_NAMES[metric][0], "definition": METRIC_NAMES[metric][1],
                     "cells": [cell(level, metric) for level in LEVELS],
                     "nulls": [null_cell(level) for level in LEVELS] if metric == "roc_auc" else None})
    sparse = []
    b = n_resamples(metrics)
    for level in LEVELS:
        e = level_entry(metrics, level)
        for metric, valid in (e.get("n_valid") or {}).items():
            if b and (e.get("metrics") or {}).get(metric) is not None and valid < b:
                sparse.append(f"{level} {METRIC_NAMES[metric][0]}: {valid} of {b}")
    return {
        "counts": [(e.get("n", 0), e.get("n_positive", 0), e.get("n_negative", 0)) for e in counts],
        "rows": rows, "footnotes": footnotes, "warnings": null_warnings(metrics), "sparse": "; ".join(sparse),
        "level_text": [(lvl, LEVEL_TEXT[lvl]) for lvl in LEVELS],
    }


def cohorts(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Sensitivity for benign and cancer per level (``None`` cells are n/a) and why some are undefined."""
    rows, notes = [], []
    for cohort in POSITIVE_COHORTS:
        cells: list[dict[str, Any] | None] = []
        for level in LEVELS:
            entry = (level_entry(metrics, level).get("by_cohort") or {}).get(cohort)
            if not entry or entry.get("sensitivity") is None:
                if entry:
                    why = (entry.get("undefined") or {}).get("sensitivity", "not computed")
                    notes.append(f"{level} {cohort}: {why}")
                cells.append(None)
                continue
            auc = entry.get("roc_auc")
            cells.append({"value": fmt("sensitivity", entry["sensitivity"]),
                          "found": entry.get("true_positives", 0), "of": entry.get("n_positive", 0),
                          "interval": fmt_ci("sensitivity", (entry.get("intervals") or {}).get("sensitivity")),
                          "auc": None if auc is None else f"{auc:.3f}"})
        rows.append((cohort, cells))
    return {"rows": rows, "notes": "; ".join(notes)}


def _lower_name(metric: str) -> str:
    name = METRIC_NAMES.get(metric, (metric,))[0]
    return name if name.isupper() or name == "ROC AUC" else name.lower()


def undefined_notes(metrics: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(level, what, why)`` for every metric that could not be computed (``what`` names the cohort too)."""
    items = []
    for level in LEVELS:
        entry = level_entry(metrics, level)
        for metric, why in (entry.get("undefined") or {}).items():
            items.append((level, _lower_name(metric), why))
        for cohort, sub in (entry.get("by_cohort") or {}).items():
            for metric, why in (sub.get("undefined") or {}).items():
                items.append((level, f"{cohort} {_lower_name(metric)}", why))
    return items
