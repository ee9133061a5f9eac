"""The experiments' comparison table (``comparison.csv`` / ``comparison.md``), read against its floors.

Each experiment row carries its image-level figures first (the study's unit is the image;
patient-level figures aggregate a patient's images and can flatter), then what it must be
read against:

* ``degenerate``: the evaluation's verdict (:func:`tasks.evaluate.metrics_chance.degeneracy`: constant
  or near-constant outputs, or every image on one side of the threshold);
* ``null_roc_auc`` / ``beats_null``: random scores aggregated the same way, and whether the
  model's AUC interval clears their range;
* ``trivial_roc_auc`` / ``beats_trivial``: the best non-learned brightness score
  (:mod:`tasks.evaluate.trivial_scores`) on the same images, and whether the paired patient-bootstrap
  interval of the difference lies above 0.

The floor rows score the same test images with no model: ``floor-constant``,
``floor-random`` and ``floor-trivial``. Presets whose effective configurations are equal
(say ``m2-inception`` and ``m2-inception-scratch`` once both train from scratch) run once
and make one row naming both (:func:`group_presets`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.core.config import PipelineConfig

__all__ = ["COMPARED", "comparison_row", "effective_key", "floor_rows", "group_presets", "write_comparison"]

#: The compared figures, the ranking one first.
COMPARED = ("roc_auc", "accuracy", "sensitivity", "specificity")
#: Settings that do not change what a run computes once its weights are resolved.
_NOT_EFFECTIVE = ("scratch_if_no_weights", "scratch_overrides", "train_deployment")


def effective_key(cfg: PipelineConfig) -> str:
    """The configuration that determines a run's results, as canonical JSON (for grouping presets)."""
    dumped = cfg.model_dump(mode="json")
    for name in _NOT_EFFECTIVE:
        dumped.pop(name, None)
    return json.dumps(dumped, sort_keys=True)


def group_presets(planned: list[tuple[str, PipelineConfig, str | None]]) -> list[tuple[list[str], PipelineConfig,
                                                                                         str | None]]:
    """Presets with equal effective configurations merged, in first-seen order: ``(names, cfg, note)``."""
    groups: dict[str, tuple[list[str], PipelineConfig, str | None]] = {}
    for name, cfg, note in planned:
        key = effective_key(cfg)
        if key in groups:
            groups[key][0].append(name)
        else:
            groups[key] = ([name], cfg, note)
    return list(groups.values())


def _metric_cells(metrics: dict[str, Any]) -> dict[str, Any]:
    """The compared figures of one metrics.json (image level first), with intervals and the null AUC."""
    cells: dict[str, Any] = {}
    for level in ("slice", "patient"):
        values = metrics["levels"][level]
        for name in COMPARED:
            low_high = (values.get("intervals") or {}).get(name) or [None, None]
            cells[f"{level}_{name}"] = values["metrics"].get(name)
            cells[f"{level}_{name}_low"], cells[f"{level}_{name}_high"] = low_high
        cells[f"{level}_null_roc_auc"] = values.get("null_roc_auc")
    return cells


def _verdict_cells(metrics: dict[str, Any]) -> dict[str, Any]:
    """``degenerate``, ``null_roc_auc``, ``trivial_roc_auc``, ``beats_null``, ``beats_trivial`` (image level)."""
    image = metrics["levels"]["slice"]
    trivial = (metrics.get("trivial") or {}).get("levels", {}).get("slice") or {}
    return {
        "degenerate": bool(metrics.get("degenerate")),
        "degenerate_reason": metrics.get("degenerate_reason") or "",
        "null_roc_auc": image.get("null_roc_auc"),
        "trivial_roc_auc": trivial.get("roc_auc"),
        "beats_null": image.get("better_than_null"),
        "beats_trivial": trivial.get("beats_trivial"),
        "trivial_score": (metrics.get("trivial") or {}).get("score") or "",
    }


def comparison_row(preset: str | list[str], cfg: PipelineConfig, outputs: dict[str, Any]) -> dict[str, Any]:
    """One experiment's row; ``preset`` may name several presets that ran as one (equal configurations)."""
    from tasks.core.presets import preset_description

    names = [preset] if isinstance(preset, str) else list(preset)
    metrics = json.loads(Path(outputs["metrics"]).read_text())
    history = pd.read_csv(outputs["history"])
    row: dict[str, Any] = {
        "preset": " + ".join(names), "description": " / ".join(preset_description(n) for n in names),
        "strategy": cfg.slices.strategy, "model": cfg.model.model, "weights": cfg.model.weights,
        "head": cfg.model.head, "optimizer": cfg.train.optimizer, "image_size": cfg.train.image_size,
        "epochs_run": int(len(history)),
    }
    row.update(_verdict_cells(metrics))
    row.update(_metric_cells(metrics))
    row["note"] = outputs.get("note") or ""
    row["report"] = outputs["report"]
    return row


def floor_rows(cfg: PipelineConfig, outputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The floor of one strategy's test images: a constant, a random and the trivial scorer."""
    from tasks.evaluate.metrics import floor_scorers, floor_tables
    from tasks.evaluate.trivial_scores import trivial_baseline

    e, strategy = cfg.evaluate, cfg.slices.strategy
    pred = pd.read_parquet(outputs["predictions"])
    manifest_path = Path(outputs["manifest"])
    manifest = pd.read_parquet(manifest_path)
    evaluated = json.loads(Path(outputs["metrics"]).read_text())
    # The floors are read at the threshold the evaluation reported at (chosen on validation unless given).
    threshold = e.threshold if e.threshold is not None else float(evaluated.get("threshold") or 0.5)
    floors = floor_scorers(pred, how=e.aggregate, threshold=threshold, bootstrap=e.bootstrap, ci=e.ci, seed=e.seed)
    tables = floor_tables(pred, threshold=threshold, seed=e.seed)
    for name, metrics in floors.items():
        metrics["trivial"] = trivial_baseline(tables[name], manifest, manifest_path.parent, how=e.aggregate,
                                              bootstrap=e.bootstrap, ci=e.ci, seed=e.seed)
    what = {"constant": f"P(tumour) = {threshold:g} for every image", "random": "seeded uniform random scores"}
    blank = {"weights": "", "head": "", "optimizer": "", "image_size": cfg.train.image_size, "epochs_run": 0,
             "note": "", "report": ""}
    rows = [{"preset": f"floor-{name}", "description": f"{name} scorer ({what[name]}) on the {strategy} test images",
             "strategy": strategy, "model": f"{name} scorer", **blank, **_verdict_cells(metrics),
             **_metric_cells(metrics)} for name, metrics in floors.items()]
    rows.append(_trivial_row(evaluated, strategy, blank))
    return rows


def _trivial_row(metrics: dict[str, Any], strategy: str, blank: dict[str, Any]) -> dict[str, Any]:
    """The trivial score's row: its ROC AUC and interval (a score, not a probability: no threshold figures)."""
    trivial = metrics.get("trivial") or {}
    row: dict[str, Any] = {
        "preset": "floor-trivial", "strategy": strategy, "model": f"trivial score {trivial.get('score', '')}",
        "description": f"best non-learned brightness score, {trivial.get('chosen_note', '')}", **blank,
        "degenerate": False, "degenerate_reason": "", "null_roc_auc": metrics["levels"]["slice"].get("null_roc_auc"),
        "beats_null": None, "beats_trivial": None, "trivial_score": trivial.get("score", ""),
    }
    for level in ("slice", "patient"):
        entry = (trivial.get("levels") or {}).get(level) or {}
        for name in COMPARED:
            row[f"{level}_{name}"] = row[f"{level}_{name}_low"] = row[f"{level}_{name}_high"] = None
        row[f"{level}_roc_auc"] = entry.get("roc_auc")
        row[f"{level}_roc_auc_low"], row[f"{level}_roc_auc_high"] = entry.get("roc_auc_interval") or [None, None]
        row[f"{level}_null_roc_auc"] = metrics["levels"][level].get("null_roc_auc")
    row["trivial_roc_auc"] = row["slice_roc_auc"]
    return row


def _fmt(value: Any, low: Any = None, high: Any = None) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "n/a"
    text = f"{value:.3f}"
    return text + (f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")


def _yes_no(value: Any) -> str:
    return "n/a" if value is None else ("yes" if value else "**NO**")


def _flags(row: dict[str, Any]) -> str:
    flags = []
    if row.get("degenerate"):
        flags.append("DEGENERATE")
    if row.get("beats_null") is False:
        flags.append("not above random")
    if row.get("beats_trivial") is False:
        flags.append("not above trivial")
    return ", ".join(flags)


def comparison_tables(results: list[tuple[list[str], PipelineConfig, str | None, dict[str, Any]]],
                      ) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """The comparison's rows and each strategy's floor rows, from each experiment's (presets, config, note, outputs).

    A run's own note (e.g. the fall-back to scratch) wins over the plan's; the floors are those
    of the first run of each slice strategy (the runs of one strategy share its test split).
    """
    rows: list[dict[str, Any]] = []
    floors: dict[str, list[dict[str, Any]]] = {}
    for names, cfg, note, outputs in results:
        if note and not outputs.get("note"):
            outputs = {**outputs, "note": note}
        rows.append(comparison_row(names, cfg, outputs))
        if cfg.slices.strategy not in floors:
            floors[cfg.slices.strategy] = floor_rows(cfg, outputs)
    return rows, floors


def write_comparison(rows: list[dict[str, Any]], floors: dict[str, list[dict[str, Any]]],
                     out: Path) -> dict[str, str]:
    """``comparison.csv`` and ``comparison.md`` of the experiments' rows, the floor rows last."""
    from tasks.core.files import atomic_write_text

    rows = rows + [row for group in floors.values() for row in group]
    table = pd.DataFrame(rows)
    csv_path = atomic_write_text(out / "comparison.csv", table.to_csv(index=False))
    lines = ["# tomoflow: the study's experiments", "",
             "Per image (the study's unit), with 95% bootstrap intervals (patients resampled); patient level "
             "beside it and in the CSV. Read every row against its floor: \"random AUC\" is what shuffled scores "
             "reach aggregated the same way, \"trivial AUC\" what the best non-learned brightness score reaches on "
             "the same images (floor-trivial row); \"beats\" needs the model's interval (for trivial: the paired "
             "interval of the difference) above them. floor-constant and floor-random score the same test images "
             "with no model. Flagged rows have learned nothing these figures can show.", "",
             "| preset | strategy | model | weights | px | epochs | image ROC AUC | accuracy | sensitivity | "
             "specificity | random AUC | trivial AUC | degenerate | beats random | beats trivial | patient ROC AUC "
             "| flags |", "|" + "---|" * 17]
    for r in rows:
        cells = [_fmt(r[f"slice_{m}"], r[f"slice_{m}_low"], r[f"slice_{m}_high"]) for m in COMPARED]
        cells += [_fmt(r["null_roc_auc"]), _fmt(r["trivial_roc_auc"]), "**yes**" if r["degenerate"] else "no",
                  _yes_no(r["beats_null"]), _yes_no(r["beats_trivial"]),
                  _fmt(r["patient_roc_auc"], r["patient_roc_auc_low"], r["patient_roc_auc_high"]), _flags(r)]
        lines.append(f"| {r['preset']} | {r['strategy']} | {r['model']} | {r['weights']} | {r['image_size']} | "
                     f"{r['epochs_run']} | " + " | ".join(cells) + " |")
    notes = [f"- {r['preset']}: {r['note']}" for r in rows if r["note"]]
    notes += [f"- {r['preset']}: degenerate: {r['degenerate_reason']}" for r in rows if r.get("degenerate_reason")]
    if notes:
        lines += ["", "Notes:", *notes]
    md_path = atomic_write_text(out / "comparison.md", "\n".join(lines) + "\n")
    return {"comparison_md": str(md_path), "comparison_csv": str(csv_path)}
