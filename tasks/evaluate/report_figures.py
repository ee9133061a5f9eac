"""The evaluation report's figures: matplotlib drawings (Agg canvas, no pyplot state) as PNG data URIs.

Each function draws one figure of ``report.html`` and returns what the template needs to show
it: the ``data:image/png;base64,...`` address, and the plain-text parts of its caption. No
HTML is written here; :mod:`tasks.evaluate.report` fills ``templates/report.html.j2``, which escapes
every value.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tasks.evaluate.metrics_point import LEVELS, aggregate

if TYPE_CHECKING:  # matplotlib and scikit-learn are imported where a figure is drawn (1-2 s)
    from matplotlib.figure import Figure

__all__ = ["calibration_figure", "confusion_figure", "example_figure", "learning_curves_figure", "roc_figure"]

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
_TRAIN, _VAL = "#0072B2", "#E69F00"
#: The columns of ``history.csv`` the learning curves draw.
CURVE_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
LEVEL_COLOURS = {"slice": "#56B4E9", "volume": "#009E73", "patient": "#D55E00"}


def png_bytes(fig: Figure, *, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # No "Software" entry: equal figures give equal bytes.
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def png_data_uri(fig: Figure, *, dpi: int = 110) -> str:
    """The figure as a ``data:`` URI: the page loads nothing from anywhere."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(fig, dpi=dpi)).decode("ascii")


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


def learning_curves_figure(h: pd.DataFrame, chance: Mapping[str, Any]) -> dict[str, Any]:
    """Loss and accuracy per epoch, with chance lines and off-scale losses marked.

    Args:
        h: ``history.csv`` sorted by epoch (all five columns present).
        chance: :func:`tasks.evaluate.metrics_chance.chance_losses`' dict (may be empty).

    Returns:
        ``src``, ``best`` (epoch of lowest validation loss or None), ``chance_notes``,
        ``top`` (the loss axis limit or None) and ``off_scale`` (texts of the losses above it).
    """
    fig, parts = draw_learning_curves(h, chance)
    return {"src": png_data_uri(fig), **parts}


def draw_learning_curves(h: pd.DataFrame, chance: Mapping[str, Any]) -> tuple[Figure, dict[str, Any]]:
    """The learning-curve figure (the report's and the dashboard's) and its caption parts.

    Args:
        h: ``history.csv`` sorted by epoch (every :data:`CURVE_COLUMNS` present).
        chance: :func:`tasks.evaluate.metrics_chance.chance_losses`' dict (may be empty).

    Returns:
        The figure, and ``best``, ``chance_notes``, ``top``, ``off_scale`` as in
        :func:`learning_curves_figure`.
    """
    from matplotlib.figure import Figure

    epochs = h["epoch"].to_numpy()
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    best = None
    if h["val_loss"].notna().any():
        best = int(h.loc[h["val_loss"].idxmin(), "epoch"])
    marker = "o" if len(epochs) <= 30 else None
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
        if column == "accuracy":
            for split, colour in (("train", _TRAIN), ("validation", _VAL)):
                value = chance.get(f"accuracy_{split}")
                if value is not None:
                    ax.axhline(100 * value, color=colour, ls=":", lw=1.4,
                               label=f"chance, {split} ({100 * value:.0f}%: the larger class)")
                    chance_notes.append(f"accuracy {split} {100 * value:.0f}%")
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
    return fig, {"best": best, "chance_notes": chance_notes, "top": top, "off_scale": off_scale}


def roc_figure(metrics: Mapping[str, Any], predictions: pd.DataFrame, levels: Mapping[str, Any]) -> dict[str, Any]:
    """ROC curves per level with operating points; ``notes`` names each level without a curve.

    Args:
        metrics: ``metrics.json``'s dict.
        predictions: The slice prediction table (non-empty).
        levels: ``metrics["levels"]`` (a level's entry may be missing).
    """
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    how = metrics.get("aggregate", "max")
    fig = Figure(figsize=(5.6, 5.0), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#8c959f", ls=":", lw=1, label="chance (AUC 0.5)")
    notes = []
    for level in LEVELS:
        table = aggregate(predictions, level, how)
        entry = levels.get(level) or {}
        auc = (entry.get("metrics") or {}).get("roc_auc")
        if table["label"].nunique() < 2 or auc is None:
            reason = (entry.get("undefined") or {}).get("roc_auc", "needs both classes")
            notes.append(f"No {level}-level ROC curve: {reason}.")
            continue
        fpr, tpr, _ = roc_curve(table["label"].astype(int), table["probability"])
        colour = LEVEL_COLOURS[level]
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
    return {"src": png_data_uri(fig), "notes": notes}


def confusion_figure(grids: Sequence[tuple[str, np.ndarray]]) -> str:
    """One 2 x 2 confusion matrix per level (``grids``: level and ``[[tn, fp], [fn, tp]]``)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.3), layout="constrained")
    axes = fig.subplots(1, len(grids))
    cmap = colormaps["Blues"]
    for ax, (level, grid) in zip(axes, grids):
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
    return png_data_uri(fig)


def calibration_figure(calibrations: Sequence[tuple[str, Mapping[str, Any], str]]) -> str:
    """Reliability diagram and cases per bin (``calibrations``: level, its calibration dict, Brier text)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax, ax_n = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    ax.plot([0, 1], [0, 1], color="#8c959f", ls=":", lw=1, label="perfect calibration")
    for level, cal, brier in calibrations:
        bins = cal.get("bins") or []
        if not bins:
            continue
        colour = LEVEL_COLOURS[level]
        ax.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], marker="o",
                color=colour, label=f"{level}, Brier {brier}")
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
    return png_data_uri(fig)


def example_figure(example: Mapping[str, Any]) -> str:
    """A Grad-CAM example: the slice (with its lesion box) beside the heat-map overlay (peak marked +)."""
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
    return png_data_uri(fig, dpi=100)
