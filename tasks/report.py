"""The evaluation report: one self-contained HTML page, plus Prefect artifact contents.

:func:`write_report` writes ``report.html``: the study's three metrics (accuracy,
sensitivity, specificity) at the patient level with their confidence intervals, in plain
words; learning curves (loss and accuracy per epoch, training and validation, as in the
study's figures); ROC curves; confusion matrices; the metrics of every level with
intervals; sensitivity for benign and cancer separately; calibration; the cohort flow and
the leak audit of the prepared data; Grad-CAM examples; the configuration; and a note for
every metric that could not be computed. Every figure is drawn with matplotlib (Agg
canvas, no pyplot state) and embedded as a base64 PNG: the page loads nothing from
anywhere, so it can be mailed, archived or opened offline.

The page shows pseudonymous BCS-DBT ids (``DBT-P00013``) and nothing else about a
patient: no names, dates of birth or report text are read or written here.

:func:`summary_markdown` and :func:`metrics_table` give the same figures for Prefect's
markdown and table artifacts.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # matplotlib and scikit-learn are imported where a figure is drawn (1-2 s)
    from matplotlib.figure import Figure


from tasks.io import atomic_write_text
from tasks.metrics import LEVELS, METRICS, POSITIVE_COHORTS, aggregate

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
    "summary": "Summary",
    "learning-curves": "Learning curves",
    "roc": "ROC curves",
    "confusion": "Confusion matrices",
    "metrics": "Metrics by level",
    "cohorts": "Sensitivity for benign and cancer",
    "calibration": "Calibration",
    "cohort-flow": "Cohort flow",
    "leak-audit": "Leak audit",
    "gradcam": "Grad-CAM examples",
    "undefined": "Notes on undefined metrics",
    "configuration": "Configuration",
}

#: Plain names and one-line definitions of the metrics.
METRIC_NAMES: dict[str, tuple[str, str]] = {
    "accuracy": ("Accuracy", "share of cases classified correctly"),
    "sensitivity": ("Sensitivity", "share of tumour cases called tumour (recall, true-positive rate)"),
    "specificity": ("Specificity", "share of normal cases called normal (true-negative rate)"),
    "roc_auc": ("ROC AUC", "chance that a random tumour case scores higher than a random normal one (0.5 = coin toss)"),
    "ppv": ("PPV", "share of cases called tumour that have one (precision)"),
    "npv": ("NPV", "share of cases called normal that are normal"),
    "f1": ("F1", "harmonic mean of PPV and sensitivity"),
    "brier": ("Brier score", "mean squared error of the probability (0 = perfect, lower is better)"),
}

_PERCENT = {"accuracy", "sensitivity", "specificity", "ppv", "npv"}

_LEVEL_TEXT = {
    "slice": "one 2-D slice (image)",
    "volume": "one DBT view (patient, study and view)",
    "patient": "one patient (all of the patient's views)",
}

_KIND_TEXT = {
    "TP": "True positive: tumour slice called tumour",
    "FP": "False positive: normal slice called tumour",
    "FN": "False negative: tumour slice called normal",
}

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
_TRAIN, _VAL = "#0072B2", "#E69F00"
_LEVEL_COLOURS = {"slice": "#56B4E9", "volume": "#009E73", "patient": "#D55E00"}

_CSS = """
:root { --ink: #1b1f24; --muted: #57606a; --line: #d0d7de; --soft: #f6f8fa; --warn: #9a6700;
        --warnbg: #fff8c5; --bad: #cf222e; --good: #1a7f37; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.3em; margin: 40px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.05em; margin: 20px 0 6px; }
p, li { max-width: 80ch; }
.meta { color: var(--muted); margin: 0 0 12px; }
nav ol { columns: 3; margin: 8px 0 0; padding-left: 20px; }
nav a { color: #0550ae; text-decoration: none; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 0.93em; }
th, td { border: 1px solid var(--line); padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.headline { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.card { flex: 1 1 220px; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; background: var(--soft); }
.card .label { color: var(--muted); font-size: 0.9em; }
.card .value { font-size: 1.8em; font-weight: 600; }
.card .ci { font-size: 0.95em; }
.card .detail { font-size: 0.9em; color: var(--muted); }
.note { background: var(--warnbg); border-left: 4px solid var(--warn); padding: 6px 12px; margin: 8px 0; max-width: 90ch; }
.ok { color: var(--good); font-weight: 600; }
.bad { color: var(--bad); font-weight: 600; }
.undef { color: var(--warn); }
figure { margin: 8px 0 16px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 0.9em; max-width: 90ch; }
.examples { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 14px; }
.examples figure { margin: 0; }
pre { background: var(--soft); padding: 8px; overflow-x: auto; }
small { color: var(--muted); }
"""


# --------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(metric: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if metric in _PERCENT:
        return f"{100 * value:.1f}%"
    return f"{value:.3f}"


def _fmt_ci(metric: str, interval: Sequence[float] | None) -> str:
    if not interval:
        return ""
    low, high = interval
    if metric in _PERCENT:
        return f"{100 * low:.1f}–{100 * high:.1f}%"
    return f"{low:.3f}–{high:.3f}"


def _ci_label(metrics: Mapping[str, Any]) -> str:
    return f"{round(100 * float(metrics.get('ci', 0.95)))}% CI"


def _n_resamples(metrics: Mapping[str, Any]) -> int:
    return int((metrics.get("bootstrap") or {}).get("n_resamples", 0))


def _png(fig: Figure, *, dpi: int = 110) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # No "Software" entry: equal figures give equal bytes.
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(fig: Figure, alt: str, caption: str | None = None, *, dpi: int = 110) -> str:
    out = f'<figure><img src="{_png(fig, dpi=dpi)}" alt="{_esc(alt)}">'
    if caption:
        out += f"<figcaption>{caption}</figcaption>"
    return out + "</figure>"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric_from: int = 1, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (already HTML)."""
    head = "".join(
        f'<th class="num">{_esc(h)}</th>' if i >= numeric_from else f"<th>{_esc(h)}</th>"
        for i, h in enumerate(header)
    )
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = str(cell) if raw else _esc(cell)
            cells.append(f'<td class="num">{text}</td>' if i >= numeric_from else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _section(anchor: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_esc(SECTION_HEADINGS[anchor])}</h2>{body}</section>'


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def _level(metrics: Mapping[str, Any], level: str) -> Mapping[str, Any]:
    return (metrics.get("levels") or {}).get(level) or {}


def _split_text(metrics: Mapping[str, Any]) -> str:
    splits = [str(s) for s in metrics.get("splits") or []]
    if not splits:
        return "evaluation set"
    if len(splits) == 1:
        return f"{splits[0]} split"
    return ", ".join(splits[:-1]) + f" and {splits[-1]} splits"


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------


#: What one case of each level is called in running text.
_UNIT = {"slice": "image", "volume": "view", "patient": "patient"}


def _null_text(entry: Mapping[str, Any]) -> str:
    """``"0.726 (95% range 0.51–0.90)"``: the ROC AUC random scores reach at a level, or ``""``."""
    null = entry.get("null_roc_auc")
    if null is None:
        return ""
    span = entry.get("null_roc_auc_range")
    return f"{null:.3f}" + (f" (95% range {span[0]:.3f}–{span[1]:.3f})" if span else "")


def _headline_card(metrics: Mapping[str, Any], metric: str, detail: str, level: str = "patient") -> str:
    entry = _level(metrics, level)
    value = (entry.get("metrics") or {}).get(metric)
    interval = (entry.get("intervals") or {}).get(metric)
    why = (entry.get("undefined") or {}).get(metric)
    name = METRIC_NAMES[metric][0]
    if value is None:
        body = f'<div class="value undef">n/a</div><div class="detail">{_esc(why or "not computed")}</div>'
    else:
        ci = (
            f'<div class="ci">{_ci_label(metrics)} {_fmt_ci(metric, interval)}</div>'
            if interval
            else '<div class="ci"><small>no interval</small></div>'
        )
        body = f'<div class="value">{_fmt(metric, value)}</div>{ci}<div class="detail">{_esc(detail)}</div>'
        if metric == "roc_auc" and _null_text(entry):
            body += f'<div class="detail">random scores, aggregated the same way: {_esc(_null_text(entry))}</div>'
            if entry.get("better_than_null") is False:
                body += '<div class="bad">not better than random scores</div>'
    return f'<div class="card"><div class="label">{_esc(name)}, per {_UNIT[level]}</div>{body}</div>'


def _level_cards(metrics: Mapping[str, Any], level: str) -> str:
    entry = _level(metrics, level)
    c = entry.get("confusion") or {}
    unit = _UNIT[level]
    n, n_pos, n_neg = entry.get("n", 0), entry.get("n_positive", 0), entry.get("n_negative", 0)
    tp, tn = c.get("tp", 0), c.get("tn", 0)
    with_tumour = f"{unit}s with a tumour" if level == "patient" else f"tumour {unit}s"
    without = f"{unit}s without a tumour" if level == "patient" else f"normal {unit}s"
    return "".join([
        _headline_card(metrics, "accuracy", f"{tp + tn} of {n} {unit}s classified correctly", level),
        _headline_card(metrics, "sensitivity", f"{tp} of {n_pos} {with_tumour} were flagged", level),
        _headline_card(metrics, "specificity", f"{tn} of {n_neg} {without} were cleared", level),
        _headline_card(metrics, "roc_auc", "does not depend on the threshold", level),
    ])


def _null_warnings(metrics: Mapping[str, Any]) -> list[str]:
    """One warning per level whose ROC AUC interval reaches what random scores get."""
    out = []
    for level in LEVELS:
        entry = _level(metrics, level)
        if entry.get("better_than_null") is False:
            out.append(
                f"Per {_UNIT[level]}, the ROC AUC ({_fmt('roc_auc', (entry.get('metrics') or {}).get('roc_auc'))}"
                + (f", {_ci_label(metrics)} {_fmt_ci('roc_auc', (entry.get('intervals') or {}).get('roc_auc'))}"
                   if (entry.get("intervals") or {}).get("roc_auc") else "")
                + f") overlaps what random scores aggregated the same way reach (mean "
                + _null_text(entry).replace(" (", ", ", 1).rstrip(")")
                + "): at this level the model is not shown to be better than chance."
            )
    return out


def _summary(metrics: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    level = _level(metrics, "patient")
    c = level.get("confusion") or {}
    n, n_pos, n_neg = level.get("n", 0), level.get("n_positive", 0), level.get("n_negative", 0)
    fp, fn = c.get("fp", 0), c.get("fn", 0)
    how = metrics.get("aggregate", "max")
    threshold = metrics.get("threshold", 0.5)
    rule = (
        f"its highest slice probability is at least {threshold:g}"
        if how == "max"
        else f"the mean of its slice probabilities is at least {threshold:g}"
    )
    parts = []
    if metrics.get("degenerate"):
        # Named first: every figure below is about a model that does not discriminate.
        parts.append(
            f'<p class="note"><strong class="bad">Degenerate model.</strong> '
            f"{_esc(metrics.get('degenerate_reason') or 'its predictions do not vary')}. None of the figures below "
            "describes a working classifier.</p>"
        )
    parts += [
        f"<p>The classifier was evaluated on the <strong>{_esc(_split_text(metrics))}</strong>: "
        f"<strong>{n} patients</strong> ({n_pos} with a tumour, benign or cancer; {n_neg} without), "
        f"{_level(metrics, 'volume').get('n', 0)} DBT views and {_level(metrics, 'slice').get('n', 0)} images "
        f"(slices). The study's unit is the image, so its measures come first; a patient is called "
        f"<em>tumour</em> when {rule}.</p>",
        "<h3>Per image (the study's unit)</h3>",
        f'<div class="headline">{_level_cards(metrics, "slice")}</div>',
        "<h3>Per patient</h3>",
        f'<div class="headline">{_level_cards(metrics, "patient")}</div>',
        "<p>Beside each ROC AUC stands the AUC that <em>random</em> scores get when aggregated exactly the same "
        "way (the model's scores shuffled across images, "
        f"{(metrics.get('null') or {}).get('draws', 200)} draws): with the maximum over a patient's images, "
        "a patient with more images wins more often by chance alone, so 0.5 is not the floor.</p>",
    ]
    parts += [_note(_esc(w)) for w in _null_warnings(metrics)]
    if (level.get("metrics") or {}).get("roc_auc") is not None:
        parts.append(
            f"<p>At the threshold, {fp} patient(s) without a tumour were flagged (false positives) and {fn} "
            f"patient(s) with a tumour were missed (false negatives).</p>"
        )
    b = _n_resamples(metrics)
    if b:
        parts.append(
            f"<p><strong>What the interval means.</strong> The {_ci_label(metrics)} (confidence interval) is "
            f"the range in which the middle {round(100 * float(metrics.get('ci', 0.95)))}% of {b} bootstrap "
            "re-draws of the patients fell: it shows how much the figure could change with another sample of "
            "patients like these. Patients, not slices, are re-drawn, because one patient's slices and views "
            "are not independent evidence. Few patients give wide intervals.</p>"
        )
    else:
        parts.append(_note("No bootstrap was run (evaluate.bootstrap = 0), so the figures have no intervals."))
    undefined = level.get("undefined") or {}
    for metric in ("accuracy", "sensitivity", "specificity"):
        if metric in undefined:
            parts.append(_note(f"Patient-level {METRIC_NAMES[metric][0].lower()} is undefined: {_esc(undefined[metric])}."))
    parts.append(_image_level_text(metrics))
    parts.append(_training_text(config))
    return _section("summary", "".join(parts))


def _image_level_text(metrics: Mapping[str, Any]) -> str:
    """The per-image figures in one sentence (an image is scored on its own, the study's unit)."""
    level = _level(metrics, "slice")
    values = level.get("metrics") or {}
    if not level.get("n"):
        return ""
    shown = [f"{METRIC_NAMES[m][0] if m != 'roc_auc' else 'ROC AUC'} {_fmt(m, values.get(m))}"
             for m in ("roc_auc", "accuracy", "sensitivity", "specificity")]
    return (f"<p>Per image (each slice scored on its own, the study's unit): {level.get('n', 0)} images, "
            f"{level.get('n_positive', 0)} with a tumour; <strong>{_esc(', '.join(shown))}</strong>.</p>")


_MODEL_NAMES = {"vgg16": "VGG16", "vgg16_bn": "VGG16 with batch normalisation (vgg16_bn)",
                "inception_v3": "Inception v3"}


def _training_text(config: Mapping[str, Any]) -> str:
    """Which network, which starting weights and which optimiser, said plainly."""
    arch = _config_value(config, ("model", "model"), ("train", "model", "model"))
    if not arch:
        return ""
    weights = _config_value(config, ("model", "weights"), ("train", "model", "weights"))
    if weights is None or str(weights).lower() in ("none", "scratch"):
        start = "<strong>trained from scratch</strong> (random initialisation; no ImageNet weights)"
    elif str(weights).lower() == "imagenet":
        start = "<strong>fine-tuned from ImageNet weights</strong> (transfer learning)"
    else:
        start = f"starting from the weights in <code>{_esc(weights)}</code>"
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
    name = _MODEL_NAMES.get(str(arch), str(arch))
    return (f"<p class=\"meta\">Model: {_esc(name)}, {start}" + (f"; {_esc(', '.join(how))}" if how else "")
            + ".</p>")


def _config_value(config: Mapping[str, Any], *paths: Sequence[str]) -> Any:
    for path in paths:
        node: Any = config
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        if node is not None and not isinstance(node, Mapping):
            return node
    return None


def _loss_top(values: np.ndarray, chance: float | None) -> float | None:
    """An upper y limit that keeps the curves readable, or ``None`` when nothing is extreme.

    A loss more than three times the typical one (the 75th percentile, or chance when that
    is higher) would squash the rest of the plot, so the axis stops at 1.6 x typical.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    typical = max(float(np.percentile(finite, 75)), chance or 0.0)
    if typical <= 0 or finite.max() <= 3 * typical:
        return None
    return 1.6 * typical


def _learning_curves(history: pd.DataFrame | None, chance: Mapping[str, Any] | None = None) -> str:
    from matplotlib.figure import Figure

    needed = {"epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy"}
    if history is None or history.empty or not needed <= set(history.columns):
        return _section("learning-curves", _note("No training history (history.csv) was found for this run."))
    h = history.sort_values("epoch")
    epochs = h["epoch"].to_numpy()
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    best = None
    if h["val_loss"].notna().any():
        best = int(h.loc[h["val_loss"].idxmin(), "epoch"])
    marker = "o" if len(epochs) <= 30 else None
    chance = chance or {}
    chance_notes = []
    for split, colour in (("train", _TRAIN), ("validation", _VAL)):
        value = chance.get(split)
        if value is not None:
            ax_loss.axhline(value, color=colour, ls=":", lw=1.4, label=f"chance, {split} ({value:.3f})")
            chance_notes.append(f"{split} {value:.3f}")
    losses = np.concatenate([h["train_loss"].to_numpy(dtype=float), h["val_loss"].to_numpy(dtype=float)])
    top = _loss_top(losses, max((v for v in (chance.get("train"), chance.get("validation")) if v is not None),
                                default=None))
    off_scale = []
    for ax, column, title, scale in (
        (ax_loss, "loss", "Loss (binary cross-entropy)", 1.0),
        (ax_acc, "accuracy", "Accuracy (%)", 100.0),
    ):
        ax.plot(epochs, scale * h[f"train_{column}"], color=_TRAIN, marker=marker, ms=3, label="training")
        ax.plot(epochs, scale * h[f"val_{column}"], color=_VAL, marker=marker, ms=3, label="validation")
        if column == "loss" and top is not None:
            ax.set_ylim(0, top)
            for split, colour in (("train", _TRAIN), ("val", _VAL)):
                for epoch, value in zip(epochs, h[f"{split}_loss"].to_numpy(dtype=float)):
                    if np.isfinite(value) and value > top:
                        # Marked at the top edge with its value, instead of squashing the other epochs.
                        ax.plot([epoch], [top * 0.97], marker="^", color=colour, ms=8, clip_on=False)
                        ax.annotate(f"{value:.3g}", (epoch, top * 0.97), textcoords="offset points", xytext=(6, -4),
                                    fontsize=8, color=colour)
                        off_scale.append(f"epoch {epoch} {'training' if split == 'train' else 'validation'} "
                                         f"loss {value:.3g}")
        if best is not None:
            ax.axvline(best, color="#57606a", ls="--", lw=1, label=f"best epoch ({best})")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    if len(epochs) <= 20:
        for ax in (ax_loss, ax_acc):
            ax.set_xticks(epochs)
    caption = (
        "Per epoch, on the training and the validation split (slice level, threshold 0.5). The checkpoint "
        "evaluated here is the one with the lowest validation loss"
        + (f" (epoch {best})" if best is not None else "")
        + ". Training figures are measured with augmentation on, while the weights change during the epoch. "
        "A validation loss that rises while the training loss falls signals over-fitting."
    )
    if chance_notes:
        balance = chance.get("class_balance")
        caption += (
            " The dotted lines mark chance: the loss of a model that gives every image the same, best constant "
            f"probability, at the class weights training used ({_esc(balance or 'as configured')}): "
            f"{_esc('; '.join(chance_notes))}. A curve at or above its line has learned nothing."
        )
    if off_scale:
        caption += (f" The loss axis stops at {top:.3g} so the other epochs stay readable; off the scale (marked ▲ "
                    f"at the top): {_esc('; '.join(off_scale))}.")
    return _section("learning-curves", _img(fig, "Loss and accuracy per epoch, training and validation", caption))


def _roc(metrics: Mapping[str, Any], predictions: pd.DataFrame | None) -> str:
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    if predictions is None or predictions.empty:
        return _section("roc", _note("No predictions were given, so no ROC curve can be drawn."))
    how = metrics.get("aggregate", "max")
    fig = Figure(figsize=(5.6, 5.0), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#8c959f", ls=":", lw=1, label="chance (AUC 0.5)")
    notes = []
    for level in LEVELS:
        table = aggregate(predictions, level, how)
        entry = _level(metrics, level)
        auc = (entry.get("metrics") or {}).get("roc_auc")
        if table["label"].nunique() < 2 or auc is None:
            reason = (entry.get("undefined") or {}).get("roc_auc", "needs both classes")
            notes.append(f"No {level}-level ROC curve: {_esc(reason)}.")
            continue
        fpr, tpr, _ = roc_curve(table["label"].astype(int), table["probability"])
        colour = _LEVEL_COLOURS[level]
        null = entry.get("null_roc_auc")
        ax.plot(fpr, tpr, color=colour, lw=2, label=f"{level} (n = {len(table)}), AUC {auc:.3f}"
                + (f"; random {null:.3f}" if null is not None else ""))
        sens = (entry.get("metrics") or {}).get("sensitivity")
        spec = (entry.get("metrics") or {}).get("specificity")
        if sens is not None and spec is not None:
            ax.plot([1 - spec], [sens], marker="o", color=colour, mec="black", ms=7)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 − specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", frameon=False, fontsize=9)
    caption = (
        f"Each curve sweeps the threshold from 1 to 0; the dots mark the operating point at threshold "
        f"{metrics.get('threshold', 0.5):g}. Volume and patient probabilities are the {how} of their slices'. "
        "“random” is the mean AUC of the model's scores shuffled across images and aggregated the same way: "
        "the floor each curve must clear."
    )
    body = _img(fig, "ROC curves per slice, volume and patient", caption)
    return _section("roc", body + "".join(_note(n) for n in notes))


def _confusion(metrics: Mapping[str, Any]) -> str:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.3), layout="constrained")
    axes = fig.subplots(1, len(LEVELS))
    cmap = colormaps["Blues"]
    for ax, level in zip(axes, LEVELS):
        c = _level(metrics, level).get("confusion") or {}
        grid = np.array([[c.get("tn", 0), c.get("fp", 0)], [c.get("fn", 0), c.get("tp", 0)]], dtype=float)
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=max(1.0, grid.max()))
        for (i, j), count in np.ndenumerate(grid):
            total = grid[i].sum()
            share = f"\n{100 * count / total:.0f}% of row" if total else ""
            ax.text(j, i, f"{int(count)}{share}", ha="center", va="center", fontsize=10,
                    color="white" if count > 0.6 * grid.max() else "black")
        ax.set_xticks([0, 1], ["normal", "tumour"])
        ax.set_yticks([0, 1], ["normal", "tumour"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(f"{level} (n = {int(grid.sum())})")
    rows = []
    for level in LEVELS:
        c = _level(metrics, level).get("confusion") or {}
        rows.append([level, c.get("tp", 0), c.get("fn", 0), c.get("fp", 0), c.get("tn", 0)])
    table = _table(["level", "true positives", "false negatives", "false positives", "true negatives"], rows)
    caption = f"Counts of cases at threshold {metrics.get('threshold', 0.5):g}; rows are the truth, columns the call."
    return _section("confusion", _img(fig, "Confusion matrices per slice, volume and patient", caption) + table)


def _metrics_section(metrics: Mapping[str, Any]) -> str:
    ci = _ci_label(metrics)
    footnotes: list[str] = []

    def cell(level: str, metric: str) -> str:
        entry = _level(metrics, level)
        value = (entry.get("metrics") or {}).get(metric)
        if value is None:
            reason = (entry.get("undefined") or {}).get(metric, "not computed")
            footnotes.append(f"{level} {METRIC_NAMES[metric][0]}: {reason}")
            return f'<span class="undef">n/a<sup>{len(footnotes)}</sup></span>'
        interval = (entry.get("intervals") or {}).get(metric)
        text = _fmt(metric, value)
        if interval:
            text += f"<br><small>{_fmt_ci(metric, interval)}</small>"
        return text

    header = ["metric"] + [f"{level}" for level in LEVELS]
    rows: list[list[str]] = []
    counts = []
    for level in LEVELS:
        e = _level(metrics, level)
        counts.append(f"{e.get('n', 0)}<br><small>{e.get('n_positive', 0)} tumour / {e.get('n_negative', 0)} normal</small>")
    rows.append(["<strong>cases (n)</strong>", *counts])
    for metric in METRICS:
        name, definition = METRIC_NAMES[metric]
        rows.append([f"<strong>{_esc(name)}</strong><br><small>{_esc(definition)}</small>",
                     *[cell(level, metric) for level in LEVELS]])
        if metric == "roc_auc":
            nulls = []
            for level in LEVELS:
                entry = _level(metrics, level)
                null, span = entry.get("null_roc_auc"), entry.get("null_roc_auc_range")
                text = "" if null is None else f"{null:.3f}" + (
                    f"<br><small>{span[0]:.3f}–{span[1]:.3f}</small>" if span else "")
                if entry.get("better_than_null") is False:
                    text += '<br><span class="bad">model not better</span>'
                elif entry.get("better_than_null"):
                    text += '<br><span class="ok">model better</span>'
                nulls.append(text or '<span class="undef">n/a</span>')
            rows.append(["<strong>ROC AUC of random scores</strong><br><small>the model's scores shuffled across "
                         "images, aggregated the same way: the floor</small>", *nulls])
    body = (
        "<p>Every metric at three levels. "
        + "; ".join(f"<strong>{lvl}</strong>: {_esc(_LEVEL_TEXT[lvl])}" for lvl in LEVELS)
        + f". Volume and patient probabilities are the {_esc(metrics.get('aggregate', 'max'))} of their slices'; "
        f"the threshold is {metrics.get('threshold', 0.5):g} at every level. Under each value: its {ci} "
        f"from {_n_resamples(metrics)} bootstrap re-draws of patients.</p>"
        + _table(header, rows, raw=True)
    )
    body += "".join(_note(_esc(w)) for w in _null_warnings(metrics))
    if footnotes:
        body += "<ol class=\"footnotes\"><small>" + "".join(f"<li>{_esc(f)}</li>" for f in footnotes) + "</small></ol>"
    sparse = []
    b = _n_resamples(metrics)
    for level in LEVELS:
        e = _level(metrics, level)
        for metric, valid in (e.get("n_valid") or {}).items():
            if b and (e.get("metrics") or {}).get(metric) is not None and valid < b:
                sparse.append(f"{level} {METRIC_NAMES[metric][0]}: {valid} of {b}")
    if sparse:
        body += _note(
            "Some intervals rest on fewer re-draws, because the metric was undefined in the others (e.g. no "
            "tumour patient drawn): " + _esc("; ".join(sparse)) + "."
        )
    return _section("metrics", body)


def _cohorts(metrics: Mapping[str, Any]) -> str:
    rows = []
    notes = []
    ci = _ci_label(metrics)
    for cohort in POSITIVE_COHORTS:
        row = [cohort]
        for level in LEVELS:
            entry = (_level(metrics, level).get("by_cohort") or {}).get(cohort)
            if not entry:
                row.append('<span class="undef">n/a</span>')
                continue
            sens = entry.get("sensitivity")
            if sens is None:
                why = (entry.get("undefined") or {}).get("sensitivity", "not computed")
                notes.append(f"{level} {cohort}: {why}")
                row.append('<span class="undef">n/a</span>')
                continue
            text = f"{_fmt('sensitivity', sens)}<br><small>{entry.get('true_positives', 0)} of {entry.get('n_positive', 0)} found"
            interval = (entry.get("intervals") or {}).get("sensitivity")
            if interval:
                text += f"; {ci} {_fmt_ci('sensitivity', interval)}"
            auc = entry.get("roc_auc")
            if auc is not None:
                text += f"<br>AUC vs normals {auc:.3f}"
            row.append(text + "</small>")
        rows.append(row)
    body = (
        "<p>Sensitivity for each kind of tumour: the share of that cohort's tumour cases called tumour, at the "
        "same threshold. The AUC compares that cohort's tumour cases with all normal cases. A volume or patient "
        "with both kinds counts as cancer.</p>"
        + _table(["cohort", *LEVELS], rows, raw=True)
    )
    if notes:
        body += _note("Undefined: " + _esc("; ".join(notes)) + ".")
    return _section("cohorts", body)


def _calibration(metrics: Mapping[str, Any]) -> str:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax, ax_n = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    ax.plot([0, 1], [0, 1], color="#8c959f", ls=":", lw=1, label="perfect calibration")
    rows = []
    for level in LEVELS:
        cal = _level(metrics, level).get("calibration") or {}
        bins = cal.get("bins") or []
        brier = cal.get("brier")
        rows.append([level, _fmt("brier", brier), sum(b["count"] for b in bins)])
        if not bins:
            continue
        colour = _LEVEL_COLOURS[level]
        ax.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], marker="o",
                color=colour, label=f"{level}, Brier {_fmt('brier', brier)}")
        centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
        width = (bins[0]["upper"] - bins[0]["lower"]) / 4
        offset = {"slice": -width, "volume": 0.0, "patient": width}[level]
        ax_n.bar([c + offset for c in centres], [b["count"] for b in bins], width=width, color=colour, label=level)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mean predicted probability of tumour (per bin)")
    ax.set_ylabel("observed fraction with tumour")
    ax.set_title("Reliability diagram")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=9, loc="upper left")
    ax_n.set_xlim(0, 1)
    ax_n.set_xlabel("predicted probability of tumour")
    ax_n.set_ylabel("cases per bin")
    ax_n.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_n.set_title("How many cases each point rests on")
    ax_n.legend(frameon=False, fontsize=9)
    n_bins = (_level(metrics, "slice").get("calibration") or {}).get("n_bins", "")
    caption = (
        f"Cases grouped into {n_bins} equal-width bins of predicted probability; a well-calibrated model's "
        "points lie on the diagonal (of the cases given 80%, about 80% have a tumour). "
        + ("With max aggregation, volume and patient probabilities are the largest of many slices', so they "
           "run higher than the true chance." if metrics.get("aggregate") == "max" else "")
    )
    body = (
        "<p>Whether the probabilities can be read as chances. The Brier score is the mean squared difference "
        "between the probability and the truth (0 or 1): 0 is perfect, and always answering 50% scores 0.25.</p>"
        + _table(["level", "Brier score", "cases"], rows)
        + _img(fig, "Reliability diagram and cases per bin", caption)
    )
    return _section("calibration", body)


_SPLITS = ("train", "validation", "test")


def _split_order(split: str) -> int:
    return (list(_SPLITS) + [split]).index(split)


def _manifest_counts(manifest: pd.DataFrame) -> tuple[str, dict[str, int]]:
    """The table of what the manifest holds, per cohort, and images per ``split/label``."""
    frame = manifest
    augmented = 0
    if "augmented_from" in frame.columns:
        copies = frame["augmented_from"].notna()
        augmented = int(copies.sum())
        frame = frame.loc[~copies]
    cohort = frame["cohort"].astype("string").fillna("unknown") if "cohort" in frame.columns else (
        frame["label"].map({0: "normal", 1: "tumour"}).astype("string"))
    frame = frame.assign(_cohort=cohort)
    volume = frame[["patient_id", "study_uid", "view"]].astype(str).agg("/".join, axis=1)
    frame = frame.assign(_volume=volume)
    frame = frame.assign(_split=frame["split"].astype("string").fillna(""))
    splits = sorted({str(v) for v in frame["_split"].unique() if v}, key=_split_order)
    cohort_order = ["normal", "actionable", "benign", "cancer"]

    def counts(group: pd.DataFrame) -> list[int]:
        by_split = [int(group.loc[group["_split"] == sp, "patient_id"].nunique()) for sp in splits]
        return [int(group["patient_id"].nunique()), int(group["_volume"].nunique()), len(group), *by_split]

    groups = sorted(frame.groupby("_cohort", observed=True),
                    key=lambda kv: (cohort_order + [str(kv[0])]).index(str(kv[0])))
    rows = [[name, *counts(group)] for name, group in groups]
    rows.append(["total", *counts(frame)])
    table = _table(["cohort", "patients", "views", "images", *[f"patients in {sp}" for sp in splits]], rows)
    if augmented:
        table += f"<p><small>Not counted: {augmented} offline-augmented copies of training images.</small></p>"
    per = {f"{sp}/{lab}": int(n) for (sp, lab), n in frame.groupby(["split", "label"], observed=True).size().items()}
    return table, per


def _cohort_flow(summary: Mapping[str, Any] | None, manifest: pd.DataFrame | None = None) -> str:
    if not summary and (manifest is None or manifest.empty):
        return _section("cohort-flow", _note("No cohort summary (cohort_summary.json) was found next to the manifest."))
    summary = summary or {}
    parts = []
    per_used: dict[str, int] | None = None
    if manifest is not None and not manifest.empty:
        table, per_used = _manifest_counts(manifest)
        parts.append("<h3>Used in this run (counted in the manifest)</h3>"
                     "<p>The patients, views and images the evaluated data actually holds, after slice selection "
                     "(e.g. single-slice keeps one image per patient and only patients whose views are all normal "
                     "as normals).</p>" + table)
    if not summary:
        parts.append(_note("No cohort summary (cohort_summary.json) was found next to the manifest."))
    volumes = summary.get("volumes") or {}
    listed = volumes.get("by_cohort") or {}
    included = volumes.get("included_by_cohort") or {}
    excluded = volumes.get("excluded") or {}
    patients = volumes.get("included_patients_by_cohort") or {}
    cohorts = sorted(set(listed) | set(included) | set(excluded) | set(patients),
                     key=lambda c: (["normal", "actionable", "benign", "cancer"] + [c]).index(c))
    if cohorts:
        rows = [[c, listed.get(c, 0), excluded.get(c, 0), included.get(c, 0), patients.get(c, 0)] for c in cohorts]
        rows.append(["total", volumes.get("volumes", sum(listed.values())), sum(excluded.values()),
                     volumes.get("included_volumes", sum(included.values())), volumes.get("included_patients", "")])
        parts.append("<h3>Volumes (DBT views) in the CSVs, by cohort, before slice selection</h3>")
        parts.append(_table(["cohort", "listed", "excluded", "eligible", "patients eligible"], rows))
        if volumes.get("positives_without_boxes"):
            parts.append(_note(f"{volumes['positives_without_boxes']} positive volume(s) have no lesion box."))
    steps = [
        ("slice strategy", summary.get("strategy")),
        ("volumes planned for extraction", summary.get("planned_volumes")),
        ("volumes rejected (unreadable)", summary.get("rejected_volumes")),
        ("rows rejected from the labels file", summary.get("label_rejects")),
        ("images (slices) written", summary.get("images")),
        ("image side (pixels)", summary.get("image_size")),
        ("seed", summary.get("seed")),
    ]
    rows = [[k, v] for k, v in steps if v is not None]
    if rows:
        parts.append("<h3>Extraction</h3>" + _table(["step", "count"], rows))
    rejects = summary.get("rejects") or {}
    if rejects:
        parts.append("<h3>Reasons for rejection</h3>" + _table(
            ["reason", "count"], [[k, v] for k, v in sorted(rejects.items())]))
    per = per_used if per_used is not None else (summary.get("images_per_split_label") or {})
    if per:
        splits = sorted({k.split("/")[0] for k in per}, key=lambda s: (["train", "validation", "test"] + [s]).index(s))
        rows = [[s, per.get(f"{s}/0", 0), per.get(f"{s}/1", 0), per.get(f"{s}/0", 0) + per.get(f"{s}/1", 0)]
                for s in splits]
        parts.append("<h3>Images per split and label</h3>" + _table(["split", "normal (0)", "tumour (1)", "total"], rows))
    return _section("cohort-flow", "".join(parts) or _note("The cohort summary holds no counts."))


def _leak_audit(summary: Mapping[str, Any] | None) -> str:
    audit = (summary or {}).get("audit")
    if not audit:
        return _section("leak-audit", _note("No leak audit was found in the cohort summary."))
    overlap = audit.get("overlap_patients")
    if overlap == 0:
        verdict = '<p class="ok">No patient appears in more than one split (overlap: 0 patients).</p>'
    else:
        verdict = (f'<p class="bad">{_esc(overlap)} patient(s) appear in more than one split: the test figures '
                   "may be optimistic.</p>")
    rows = []
    splits = audit.get("splits") or {}
    for split in sorted(splits, key=lambda s: (["train", "validation", "test"] + [s]).index(s)):
        entry = splits[split] or {}
        by_label = entry.get("by_label") or {}
        neg, pos = by_label.get("0") or {}, by_label.get("1") or {}
        rows.append([split, entry.get("patients", 0), entry.get("rows", 0), pos.get("patients", 0), pos.get("rows", 0),
                     neg.get("patients", 0), neg.get("rows", 0)])
    if audit.get("patients") is not None:
        rows.append(["all", audit.get("patients"), audit.get("rows", ""), "", "", "", ""])
    body = (
        "<p>Splits are drawn by patient, so no patient's images can be both learned from and tested on.</p>"
        + verdict
        + _table(["split", "patients", "images", "tumour patients", "tumour images", "normal patients",
                  "normal images"], rows)
    )
    return _section("leak-audit", body)


def _example_figure(example: Mapping[str, Any]) -> str:
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    image = np.asarray(example["image"])
    heat = np.asarray(example["heatmap"], dtype=np.float32)
    box = example.get("box")
    fig = Figure(figsize=(5.0, 2.7), layout="constrained")
    ax_raw, ax_cam = fig.subplots(1, 2)
    for ax in (ax_raw, ax_cam):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_axis_off()
    ax_cam.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
    if heat.size and heat.max() > 0:
        r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
        ax_cam.plot([c], [r], marker="+", color="white", ms=10, mew=2)
    if box is not None:
        x, y, w, h = box
        for ax in (ax_raw, ax_cam):
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec="#00ff66", lw=1.6))
    ax_raw.set_title("slice" + (" + lesion box" if box is not None else ""), fontsize=10)
    ax_cam.set_title("Grad-CAM overlay", fontsize=10)
    ids = example.get("ids") or {}
    kind = str(example.get("kind", ""))
    id_text = " / ".join(
        _esc(ids[k]) if k != "slice_index" else f"slice {_esc(ids[k])}"
        for k in ("patient_id", "study_uid", "view", "slice_index") if k in ids
    )
    peak = example.get("peak_in_box")
    peak_text = "" if peak is None else f"; peak {'inside' if peak else 'outside'} the box"
    cohort = f"; cohort {_esc(example['cohort'])}" if example.get("cohort") else ""
    resolution = example.get("map_resolution")
    map_text = (f"<br>Grad-CAM map {int(resolution[0])} x {int(resolution[1])} cells"
                + (f" ({_esc(example['layer'])})" if example.get("layer") else "")
                + f", upsampled to {image.shape[1]} x {image.shape[0]} px") if resolution else ""
    caption = (f"<strong>{_esc(kind)}</strong>: {_esc(_KIND_TEXT.get(kind, ''))}. "
               f"P(tumour) = {float(example.get('probability', float('nan'))):.3f}{cohort}{peak_text}.<br>{id_text}"
               f"{map_text}")
    return _img(fig, f"{kind} example {id_text}", caption, dpi=100)


def _occlusion(occ: Mapping[str, Any] | None) -> str:
    if not occ:
        return ""
    head = ("<h3>Occlusion check: does the model look at the lesion?</h3><p>Each tumour image's lesion box was "
            "filled with the median of the tissue around it and the image scored again. A model that found the "
            "tumour in the lesion calls the image normal once the lesion is hidden. Unlike the heat map, this "
            "does not depend on a layer's resolution.</p>")
    if occ.get("mean_drop") is None:
        return head + _note(f"Occlusion check not possible: {_esc(occ.get('reason', 'no boxed tumour image'))}.")
    text = (f"<p>Mean drop in P(tumour) when the box is hidden: <strong>{occ['mean_drop']:.3f}</strong> "
            f"(from {occ['mean_probability']:.3f} to {occ['mean_probability_hidden']:.3f}, over {occ['n']} "
            "tumour images with a box). ")
    if occ.get("flip_fraction") is not None:
        text += (f"Of the {occ['n_called_positive']} of them called tumour, <strong>{occ['flips']} "
                 f"({100 * occ['flip_fraction']:.1f}%)</strong> are called normal once the lesion is hidden.</p>")
    else:
        text += f"{_esc(occ.get('reason', ''))}.</p>"
    return head + text


def _gradcam(metrics: Mapping[str, Any], examples: Sequence[Mapping[str, Any]]) -> str:
    parts = [
        "<p>Grad-CAM shows where in the slice the network found the evidence behind its tumour score: "
        "red is most, blue least (each map scaled to its own maximum; + marks the peak). The green box is the "
        "annotated lesion. A heat map is a hint of what the network used, not a lesion outline.</p>"
    ]
    loc = metrics.get("localization")
    if loc and loc.get("map_resolution"):
        h, w = loc["map_resolution"]
        parts.append(
            f"<p><strong>Map resolution:</strong> the heat maps come from layer {_esc(loc.get('layer', '?'))}, "
            f"whose map is <strong>{h} x {w}</strong> cells at this input size; each cell is then spread over "
            "its share of the image by bilinear upsampling, so a lesion smaller than a cell cannot be told "
            "from its surroundings.</p>"
        )
    if loc and loc.get("note"):
        parts.append(_note(_esc(loc["note"][0].upper() + loc["note"][1:]) + "."))
    if loc:
        if loc.get("fraction") is not None:
            parts.append(
                f"<p>Localisation check: on <strong>{loc.get('hits', 0)} of {loc.get('n', 0)}</strong> tumour "
                f"slices with a lesion box ({100 * loc['fraction']:.1f}%), the heat map's peak lies inside the box"
                + (f"; {loc['n_no_signal']} map(s) showed no evidence at all" if loc.get("n_no_signal") else "")
                + ".</p>"
            )
        else:
            parts.append(_note(f"Localisation check not possible: {_esc(loc.get('reason', 'no boxed tumour slice'))}."))
    parts.append(_occlusion(metrics.get("occlusion")))
    if not examples:
        parts.append(_note("No Grad-CAM examples were produced (evaluate.gradcam_examples = 0, or no case of "
                           "these kinds in the split)."))
        return _section("gradcam", "".join(parts))
    for kind in ("TP", "FP", "FN"):
        chosen = [e for e in examples if e.get("kind") == kind]
        parts.append(f"<h3>{_esc(_KIND_TEXT[kind])}</h3>")
        if not chosen:
            parts.append(f"<p><small>No {kind} slice in this split at this threshold.</small></p>")
            continue
        parts.append('<div class="examples">' + "".join(_example_figure(e) for e in chosen) + "</div>")
    return _section("gradcam", "".join(parts))


def _lower_name(metric: str) -> str:
    name = METRIC_NAMES.get(metric, (metric,))[0]
    return name if name.isupper() or name == "ROC AUC" else name.lower()


def _undefined_notes(metrics: Mapping[str, Any]) -> str:
    items = []
    for level in LEVELS:
        entry = _level(metrics, level)
        for metric, why in (entry.get("undefined") or {}).items():
            items.append(f"<li><strong>{_esc(level)}</strong>, {_esc(_lower_name(metric))}: {_esc(why)}.</li>")
        for cohort, sub in (entry.get("by_cohort") or {}).items():
            for metric, why in (sub.get("undefined") or {}).items():
                items.append(f"<li><strong>{_esc(level)}</strong>, {_esc(cohort)} {_esc(_lower_name(metric))}: "
                             f"{_esc(why)}.</li>")
    if not items:
        return _section("undefined", "<p>Every metric could be computed at every level.</p>")
    body = ("<p>These metrics are shown as n/a, not as 0: the cases needed to compute them are absent.</p>"
            f"<ul>{''.join(items)}</ul>")
    return _section("undefined", body)


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        out: list[tuple[str, Any]] = []
        for key in sorted(value, key=str):
            out += _flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(value, (list, tuple)):
        return [(prefix, ", ".join(str(v) for v in value))]
    return [(prefix, "none" if value is None else value)]


def _configuration(config: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    rows = _flatten(config)
    rows += [
        ("evaluation.threshold", metrics.get("threshold")),
        ("evaluation.aggregate", metrics.get("aggregate")),
        ("evaluation.ci", metrics.get("ci")),
        ("evaluation.bootstrap", _n_resamples(metrics)),
        ("evaluation.bootstrap_seed", (metrics.get("bootstrap") or {}).get("seed")),
    ]
    body = "<p>The settings this run was trained and evaluated with.</p>" + _table(
        ["setting", "value"], rows, numeric_from=99
    )
    return _section("configuration", body)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


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
) -> Path:
    """Write the evaluation report: one self-contained HTML page.

    Args:
        run_dir: The training run's folder (named in the title; the default output folder).
        metrics: :func:`tasks.metrics.evaluate_predictions`' dict, optionally with
            ``localization`` (:func:`models.gradcam.box_hit_fraction`'s dict) and
            ``occlusion`` (:func:`models.gradcam.occlusion_check`'s dict).
        history: ``history.csv`` of the run (``epoch``, ``train_loss``, ``train_accuracy``,
            ``val_loss``, ``val_accuracy``), or ``None``.
        cohort_summary: ``cohort_summary.json`` of the prepared data, or ``None``.
        config: The configuration to show (e.g. ``{"train": ..., "evaluate": ...}``).
        predictions: The slice prediction table (for the ROC curves), or ``None``.
        examples: Grad-CAM examples (:func:`models.gradcam.gradcam_examples`): dicts with
            ``kind`` (TP, FP, FN), ``image`` (``(H, W)`` uint8), ``heatmap`` (``(H, W)``
            float in [0, 1]), ``box`` (``(x, y, w, h)`` or ``None``), ``probability``,
            ``ids`` and optionally ``cohort`` and ``peak_in_box``.
        out_path: Where to write; default ``run_dir/report.html``.
        chance: :func:`tasks.metrics.chance_losses` of the training run (``train``,
            ``validation``, ``class_balance``): the chance lines of the learning curves.
        manifest: The manifest the evaluated data came from: the cohort flow counts the
            patients, views and images it actually holds.

    Returns:
        The path written (atomically).
    """
    run_dir = Path(run_dir)
    out = Path(out_path) if out_path is not None else run_dir / REPORT_NAME
    title = f"Evaluation of run {run_dir.name}"
    toc = "".join(f'<li><a href="#{a}">{_esc(h)}</a></li>' for a, h in SECTION_HEADINGS.items())
    sections = [
        _summary(metrics, config),
        _learning_curves(history, chance),
        _roc(metrics, predictions),
        _confusion(metrics),
        _metrics_section(metrics),
        _cohorts(metrics),
        _calibration(metrics),
        _cohort_flow(cohort_summary, manifest),
        _leak_audit(cohort_summary),
        _gradcam(metrics, examples),
        _undefined_notes(metrics),
        _configuration(config, metrics),
    ]
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<header><h1>Tumour / no-tumour classifier: evaluation report</h1>"
        f'<p class="meta">Run <strong>{_esc(run_dir.name)}</strong> · {_esc(_split_text(metrics))} · '
        f"breast tomosynthesis (BCS-DBT) slices · patient ids are the collection's pseudonyms.</p></header>\n"
        f'<nav aria-label="Contents"><strong>Contents</strong><ol>{toc}</ol></nav>\n'
        + "\n".join(sections)
        + "\n</main>\n</body>\n</html>\n"
    )
    return atomic_write_text(out, page)


def summary_markdown(metrics: Mapping[str, Any]) -> str:
    """Markdown for a Prefect artifact: a degenerate model named first, then the image and patient headlines."""
    ci = _ci_label(metrics)
    lines = [f"### Evaluation on the {_split_text(metrics)}", ""]
    if metrics.get("degenerate"):
        lines += [f"**Degenerate model:** {metrics.get('degenerate_reason') or 'its predictions do not vary'}.", ""]
    lines += [
        f"Threshold {metrics.get('threshold', 0.5):g}, {metrics.get('aggregate', 'max')} of slice probabilities; "
        f"{ci} from {_n_resamples(metrics)} patient bootstrap re-draws; \"random\" is the ROC AUC of the "
        "model's scores shuffled across images and aggregated the same way.",
    ]
    for level in ("slice", "patient"):
        entry = _level(metrics, level)
        lines += [
            "",
            f"Per {_UNIT[level]} (n = {entry.get('n', 0)}: {entry.get('n_positive', 0)} with a tumour, "
            f"{entry.get('n_negative', 0)} without)",
            "",
            f"| Metric | Value | {ci} |",
            "|---|---:|---:|",
        ]
        for metric in ("accuracy", "sensitivity", "specificity", "roc_auc"):
            value = (entry.get("metrics") or {}).get(metric)
            interval = (entry.get("intervals") or {}).get(metric)
            shown = _fmt(metric, value) if value is not None else "n/a"
            lines.append(f"| {METRIC_NAMES[metric][0]} | {shown} | {_fmt_ci(metric, interval) or '–'} |")
        if _null_text(entry):
            lines.append(f"| ROC AUC of random scores | {_null_text(entry)} | |")
    lines += ["", "| Level | n | Accuracy | Sensitivity | Specificity | ROC AUC | random ROC AUC |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for level in LEVELS:
        e = _level(metrics, level)
        values = [_fmt(m, (e.get("metrics") or {}).get(m)) for m in ("accuracy", "sensitivity", "specificity", "roc_auc")]
        null = e.get("null_roc_auc")
        values.append("n/a" if null is None else f"{null:.3f}")
        lines.append(f"| {level} | {e.get('n', 0)} | " + " | ".join(values) + " |")
    warnings = _null_warnings(metrics)
    if warnings:
        lines += ["", *[f"**Warning:** {w}" for w in warnings]]
    notes = [
        f"{level} {METRIC_NAMES.get(m, (m,))[0]}: {why}"
        for level in LEVELS
        for m, why in (_level(metrics, level).get("undefined") or {}).items()
    ]
    if notes:
        lines += ["", "**Undefined (shown as n/a):** " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def metrics_table(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows for a Prefect table artifact: one per level and metric.

    Returns:
        Dicts with ``level``, ``metric`` (:data:`~tasks.metrics.METRICS`, then
        ``null_roc_auc`` (low and high: its 95% range; note: the warning when the model's
        interval overlaps it), then ``sensitivity_<cohort>`` for benign and cancer), ``value``, ``low``, ``high``
        (``None`` where undefined or not bootstrapped; rounded to 4 decimals), ``n`` (cases
        at the level; positives of the cohort for cohort rows) and ``note`` (why a value
        is missing, else empty).
    """
    rows: list[dict[str, Any]] = []
    for level in LEVELS:
        e = _level(metrics, level)
        for metric in METRICS:
            interval = (e.get("intervals") or {}).get(metric) or [None, None]
            rows.append({
                "level": level,
                "metric": metric,
                "value": _round((e.get("metrics") or {}).get(metric)),
                "low": _round(interval[0]),
                "high": _round(interval[1]),
                "n": int(e.get("n", 0)),
                "note": (e.get("undefined") or {}).get(metric, ""),
            })
        span = e.get("null_roc_auc_range") or [None, None]
        rows.append({
            "level": level,
            "metric": "null_roc_auc",
            "value": _round(e.get("null_roc_auc")),
            "low": _round(span[0]),
            "high": _round(span[1]),
            "n": int(e.get("n", 0)),
            "note": e.get("null_warning") or "",
        })
        for cohort, sub in (e.get("by_cohort") or {}).items():
            interval = (sub.get("intervals") or {}).get("sensitivity") or [None, None]
            rows.append({
                "level": level,
                "metric": f"sensitivity_{cohort}",
                "value": _round(sub.get("sensitivity")),
                "low": _round(interval[0]),
                "high": _round(interval[1]),
                "n": int(sub.get("n_positive", 0)),
                "note": (sub.get("undefined") or {}).get("sensitivity", ""),
            })
    return rows
