"""The sweep's files: ``sweep.csv``, ``sweep.md``, ``sweep.json`` (with the verdicts) and ``sweep.png``.

The plot draws, per starting point (labelled by its short name, :func:`tasks.sweep.analysis.start_label`,
never a path), each repeat's test AUC and their mean against the training patients, the
zero-shot point (the starting model before fine-tuning) at 0 patients, the trivial
brightness score's AUC with its interval as a band, and chance.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["sweep_markdown", "write_sweep_outputs"]


def _plot(table: pd.DataFrame, trivial: Mapping[str, Any] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=100)
    if trivial and trivial.get("roc_auc") is not None:
        low, high = trivial.get("interval") or (trivial["roc_auc"], trivial["roc_auc"])
        ax.axhspan(low, high, color="tab:orange", alpha=0.15, linewidth=0)
        ax.axhline(trivial["roc_auc"], color="tab:orange", linewidth=1,
                   label=f"trivial floor ({trivial.get('score')}, 95% band)")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance (AUC 0.5)")
    for i, (start, rows) in enumerate(table.groupby("start", sort=False)):
        color = f"C{i}"
        trained = rows[rows["fraction"] > 0]
        ax.scatter(trained["train_patients"], trained["roc_auc"].astype(float), color=color, alpha=0.35, s=14)
        mean = trained.groupby("train_patients")["roc_auc"].mean()
        ax.plot(mean.index, mean.to_numpy(float), marker="o", color=color, label=f"{start} (mean of repeats)")
        zero = rows[rows["fraction"] == 0]
        if len(zero):
            ax.scatter(zero["train_patients"], zero["roc_auc"].astype(float), marker="*", s=120, color=color,
                       edgecolor="black", zorder=5, label=f"{start} before fine-tuning")
    ax.set_xlabel("training patients (0: the starting model, not fine-tuned)")
    ax.set_ylabel("test ROC AUC per image")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def _f(v: Any, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.3f}" if sign else f"{v:.3f}"


def sweep_markdown(table: pd.DataFrame, differences: Sequence[Mapping[str, Any]],
                   verdicts: Sequence[Mapping[str, Any]]) -> str:
    """The sweep as markdown: verdicts first, then the table and the pooled differences."""
    lines = ["# Training-size sweep (test split, per image)", ""]
    for v in verdicts:
        lines.append(f"- **{v['verdict']}** — {v['sentence']}")
    lines += ["", "| start | fraction | repeat | training patients | ROC AUC | interval | null AUC | trivial AUC | "
              "beats trivial | best epoch | optimiser steps | capped |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        beats = "n/a" if r["beats_trivial"] is None or pd.isna(r["beats_trivial"]) else (
            "yes" if r["beats_trivial"] else "no")
        best = "—" if r["fraction"] == 0 else ("n/a" if pd.isna(r["best_epoch"]) else int(r["best_epoch"]))
        lines.append(f"| {r['start']} | {r['fraction']:g} | {r['repeat']} | {r['train_patients']} | {_f(r['roc_auc'])} | "
                     f"[{_f(r['roc_auc_low'])}, {_f(r['roc_auc_high'])}] | {_f(r['null_roc_auc'])} | "
                     f"{_f(r['trivial_roc_auc'])} | {beats} | {best} | {r['optimizer_steps']} | "
                     f"{'yes' if r['capped'] else 'no'} |")
    if differences:
        lines += ["", "Difference in ROC AUC against the first starting point, averaged over repeats; the interval "
                  "resamples repeats and test patients (an interval holding 0 shows no difference):", "",
                  "| fraction | start | minus | difference | interval | repeats |", "|---|---|---|---|---|---|"]
        names = dict(zip(table["weights"], table["start"]))
        for d in differences:
            lines.append(f"| {d['fraction']:g} | {names.get(d['weights'], d['weights'])} | "
                         f"{names.get(d['reference'], d['reference'])} | {_f(d['roc_auc_difference'], True)} | "
                         f"[{_f(d['low'], True)}, {_f(d['high'], True)}] | {d.get('repeats', 1)} |")
    return "\n".join(lines) + "\n"


def write_sweep_outputs(out_dir: str | os.PathLike[str], table: pd.DataFrame, differences: Sequence[Mapping[str, Any]],
                        verdicts: Sequence[Mapping[str, Any]], *, trivial: Mapping[str, Any] | None = None,
                        extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Write ``sweep.csv``, ``sweep.md``, ``sweep.json`` and ``sweep.png`` into ``out_dir``; return their paths.

    ``sweep.json`` holds ``runs`` (the table), ``differences``, ``verdict`` (one per size and
    starting point), ``trivial`` (the floor) and whatever ``extra`` adds (the arms against the
    trivial score, the settings).
    """
    from tasks.core.files import atomic_write, atomic_write_json, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / "sweep.csv", "markdown": out / "sweep.md", "json": out / "sweep.json",
             "plot": out / "sweep.png"}
    atomic_write_text(paths["table"], table.to_csv(index=False))
    atomic_write_text(paths["markdown"], sweep_markdown(table, differences, verdicts))
    atomic_write_json(paths["json"], {"runs": json.loads(table.to_json(orient="records")),
                                      "differences": list(differences), "verdict": list(verdicts),
                                      "trivial": dict(trivial or {}), **dict(extra or {})})
    atomic_write(paths["plot"], lambda tmp: _plot(table, trivial, Path(tmp)))
    return {k: str(v) for k, v in paths.items()}
