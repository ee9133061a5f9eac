"""``sweep/index.html``: the sweep on one self-contained page (like ``report.html``: nothing loaded from anywhere).

In order: the verdict as one sentence per size and starting point; the plot (trivial floor as
a band, zero-shot points); the table; each run's learning curves as small multiples; each
earlier model's own test figures and whether it beat its trivial floor; and the overlap audit
between the earlier model's training patients and the target's test patients (from its
zero-shot evaluation's ``training_audit.json``). Runs are named by their folder name, never
by a path. The template is ``templates/sweep.html.j2`` (autoescaping on); figures are base64 PNGs.
"""

from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.core.weights_setting import WeightsSetting

__all__ = ["PAGE_NAME", "write_sweep_page"]

PAGE_NAME = "index.html"


def _num(v: Any, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.3f}" if sign else f"{v:.3f}"


def _interval(pair: Any, sign: bool = False) -> str:
    return f"[{_num(pair[0], sign)}, {_num(pair[1], sign)}]" if pair else "n/a"


def _curves(table: pd.DataFrame) -> str | None:
    """Every trained run's training and validation loss per epoch, one small panel each (rows: starting points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.evaluate.report_figures import png_data_uri

    trained = table[table["fraction"] > 0]
    histories = {}
    for r in trained.to_dict("records"):
        path = Path(r["run_dir"]) / "history.csv"
        if path.is_file():
            histories[(r["start"], r["fraction"], r["repeat"])] = (pd.read_csv(path), r["best_epoch"])
    if not histories:
        return None
    starts = list(dict.fromkeys(k[0] for k in histories))
    cols = sorted({k[1:] for k in histories})
    fig, axes = plt.subplots(len(starts), len(cols), figsize=(1.9 * len(cols) + 0.6, 1.6 * len(starts) + 0.6),
                             squeeze=False, sharey=True)
    for i, start in enumerate(starts):
        for j, (fraction, repeat) in enumerate(cols):
            ax = axes[i][j]
            ax.tick_params(labelsize=6)
            entry = histories.get((start, fraction, repeat))
            if entry is None:
                ax.set_axis_off()
                continue
            h, best = entry
            ax.plot(h["epoch"], h["train_loss"], linewidth=1, label="train")
            ax.plot(h["epoch"], h["val_loss"], linewidth=1, label="validation")
            ax.axhline(math.log(2), color="grey", linestyle=":", linewidth=0.8)
            if best is not None and not pd.isna(best):
                ax.axvline(float(best), color="black", linewidth=0.6, linestyle="--")
            ax.set_title(f"{start} f{fraction:g} r{repeat}", fontsize=6)
    axes[0][0].legend(fontsize=5)
    fig.supxlabel("epoch (dashed: best; dotted: ln 2, the loss of a constant 0.5)", fontsize=7)
    fig.supylabel("loss", fontsize=7)
    fig.tight_layout()
    uri = png_data_uri(fig, dpi=90)
    plt.close(fig)
    return uri


def _sources(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Each earlier-model start: its own test figures beside its floor, and the overlap audit on the target."""
    from models.weights.transfer import weights_source

    out = []
    for weights in dict.fromkeys(table["weights"]):
        checkpoint = WeightsSetting.verify(weights).checkpoint()
        if checkpoint is None:
            continue
        rows = table[(table["weights"] == weights) & (table["fraction"] == 0)]
        start = str(table.loc[table["weights"] == weights, "start"].iloc[0])
        source = weights_source("vgg16", weights)
        figures = source.get("test_figures") or None
        audit = None
        if len(rows):
            path = Path(rows["run_dir"].iloc[0]) / "training_audit.json"
            audit = json.loads(path.read_text()) if path.is_file() else None
        entry: dict[str, Any] = {"start": start, "folder": Path(source["run"]).name, "epoch": source.get("epoch"),
                                 "figures": None, "audit": None}
        if figures:
            trivial = figures.get("trivial") or {}
            beats = trivial.get("beats_trivial")
            entry["figures"] = {
                "split": figures.get("split") or "evaluated", "n": figures.get("n"),
                "auc": _num(figures["metrics"].get("roc_auc")),
                "auc_interval": _interval((figures.get("intervals") or {}).get("roc_auc")),
                "trivial": _num(trivial.get("roc_auc")), "score": trivial.get("score") or "n/a",
                "difference": _num(trivial.get("model_minus_trivial"), True),
                "difference_interval": _interval(trivial.get("difference_interval"), True),
                "beats": "n/a" if beats is None else ("yes" if beats else "no"), "beats_ok": bool(beats)}
        if audit:
            evaluated = audit.get("evaluated") or {}
            entry["audit"] = {
                "checked": bool(audit.get("checked")), "reason": audit.get("reason"),
                "patients": evaluated.get("patients"), "images": evaluated.get("images"),
                "overlap_patients": audit.get("overlap_patients"), "overlap_studies": audit.get("overlap_studies"),
                "overlap_images": audit.get("overlap_images"), "pixels": bool(audit.get("pixels_checked")),
                "clean": bool(audit.get("checked")) and not audit.get("overlap_rows")}
        out.append(entry)
    return out


def _rows(table: pd.DataFrame) -> list[list[str]]:
    rows = []
    for r in table.to_dict("records"):
        beats = r["beats_trivial"]
        rows.append([r["start"], f"{r['fraction']:g}", str(r["repeat"]), str(r["train_patients"]), _num(r["roc_auc"]),
                     _interval((r["roc_auc_low"], r["roc_auc_high"])), _num(r["null_roc_auc"]),
                     _num(r["trivial_roc_auc"]), "n/a" if beats is None or pd.isna(beats) else ("yes" if beats else "no"),
                     "—" if r["fraction"] == 0 or pd.isna(r["best_epoch"]) else str(int(r["best_epoch"])),
                     str(r["optimizer_steps"]), "yes" if r["capped"] else "no", Path(str(r["run_dir"])).name])
    return rows


def write_sweep_page(out_dir: str | os.PathLike[str], table: pd.DataFrame, differences: Sequence[Mapping[str, Any]],
                     verdicts: Sequence[Mapping[str, Any]], trivial: Mapping[str, Any] | None,
                     plot: str | os.PathLike[str]) -> Path:
    """Write ``index.html`` into ``out_dir`` and return its path."""
    import jinja2

    from tasks.core.files import atomic_write_text

    # The evaluation report's style sheet, shared.
    loader = jinja2.ChoiceLoader([jinja2.PackageLoader("tasks.sweep", "templates"),
                                  jinja2.PackageLoader("tasks.evaluate", "templates")])
    env = jinja2.Environment(loader=loader, autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    names = dict(zip(table["weights"], table["start"]))
    diffs = [[f"{d['fraction']:g}", names.get(d["weights"], "?"), names.get(d["reference"], "?"),
              _num(d["roc_auc_difference"], True), _interval((d["low"], d["high"]), True), str(d.get("repeats", 1))]
             for d in differences]
    plot_uri = "data:image/png;base64," + base64.b64encode(Path(plot).read_bytes()).decode("ascii")
    html = env.get_template("sweep.html.j2").render(
        verdicts=list(verdicts), plot=plot_uri, rows=_rows(table), differences=diffs, curves=_curves(table),
        sources=_sources(table), trivial={"score": (trivial or {}).get("score") or "n/a",
                                          "auc": _num((trivial or {}).get("roc_auc")),
                                          "interval": _interval((trivial or {}).get("interval"))},
        repeats=int(table["repeat"].max()) + 1 if len(table) else 0)
    return atomic_write_text(Path(out_dir) / PAGE_NAME, html)
