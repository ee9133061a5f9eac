"""What ``report.html`` says about the data and the model's evidence: plain values for the template.

The cohort flow (what the CSVs list, what the manifest holds), the leak audit of the splits,
the Grad-CAM examples with the localisation and occlusion checks, and the run's settings. Like
:mod:`tasks.evaluate.report_sections`, nothing here writes HTML; ``templates/report.html.j2`` escapes
every value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tasks.evaluate import report_figures as figures
from tasks.evaluate.report_format import KIND_TEXT, n_resamples
from tasks.core.schema import COHORTS, SPLITS


def _order(order: Sequence[str]):  # noqa: ANN202 - a sort key
    """Sort key: names of ``order`` first, in that order, then the others as they come."""
    return lambda name: (list(order) + [str(name)]).index(str(name))


def manifest_counts(manifest: pd.DataFrame) -> dict[str, Any]:
    """What the manifest holds per cohort (table), offline-augmented copies left out, and images per ``split/label``."""
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
    splits = sorted({str(v) for v in frame["_split"].unique() if v}, key=_order(SPLITS))

    def counts(group: pd.DataFrame) -> list[int]:
        by_split = [int(group.loc[group["_split"] == sp, "patient_id"].nunique()) for sp in splits]
        return [int(group["patient_id"].nunique()), int(group["_volume"].nunique()), len(group), *by_split]

    order = _order(COHORTS)
    groups = sorted(frame.groupby("_cohort", observed=True), key=lambda kv: order(kv[0]))
    rows = [[name, *counts(group)] for name, group in groups]
    rows.append(["total", *counts(frame)])
    per = {f"{sp}/{lab}": int(n) for (sp, lab), n in frame.groupby(["split", "label"], observed=True).size().items()}
    return {"header": ["cohort", "patients", "views", "images", *[f"patients in {sp}" for sp in splits]],
            "rows": rows, "augmented": augmented, "per": per}


def cohort_flow(summary: Mapping[str, Any] | None, manifest: pd.DataFrame | None = None) -> dict[str, Any] | None:
    """The cohort flow's tables, or ``None`` with neither a cohort summary nor a manifest."""
    if not summary and (manifest is None or manifest.empty):
        return None
    summary = summary or {}
    used = manifest_counts(manifest) if manifest is not None and not manifest.empty else None
    volumes = summary.get("volumes") or {}
    listed = volumes.get("by_cohort") or {}
    included = volumes.get("included_by_cohort") or {}
    excluded = volumes.get("excluded") or {}
    patients = volumes.get("included_patients_by_cohort") or {}
    cohorts = sorted(set(listed) | set(included) | set(excluded) | set(patients), key=_order(COHORTS))
    volume_rows = []
    if cohorts:
        volume_rows = [[c, listed.get(c, 0), excluded.get(c, 0), included.get(c, 0), patients.get(c, 0)]
                       for c in cohorts]
        volume_rows.append(["total", volumes.get("volumes", sum(listed.values())), sum(excluded.values()),
                            volumes.get("included_volumes", sum(included.values())),
                            volumes.get("included_patients", "")])
    steps = [
        ("slice strategy", summary.get("strategy")),
        ("volumes planned for extraction", summary.get("planned_volumes")),
        ("volumes rejected (unreadable)", summary.get("rejected_volumes")),
        ("rows rejected from the labels file", summary.get("label_rejects")),
        ("images (slices) written", summary.get("images")),
        ("image side (pixels)", summary.get("image_size")),
        ("seed", summary.get("seed")),
    ]
    per = used["per"] if used is not None else (summary.get("images_per_split_label") or {})
    split_rows = []
    if per:
        splits = sorted({k.split("/")[0] for k in per}, key=_order(SPLITS))
        split_rows = [[s, per.get(f"{s}/0", 0), per.get(f"{s}/1", 0), per.get(f"{s}/0", 0) + per.get(f"{s}/1", 0)]
                      for s in splits]
    return {
        "used": used,
        "has_summary": bool(summary),
        "volume_rows": volume_rows,
        "without_boxes": volumes.get("positives_without_boxes") if cohorts else None,
        "steps": [[k, v] for k, v in steps if v is not None],
        "rejects": [[k, v] for k, v in sorted((summary.get("rejects") or {}).items())],
        "split_rows": split_rows,
    }


def leak_audit(summary: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Patients shared between splits and the per-split counts, or ``None`` without an audit."""
    audit = (summary or {}).get("audit")
    if not audit:
        return None
    rows = []
    splits = audit.get("splits") or {}
    for split in sorted(splits, key=_order(SPLITS)):
        entry = splits[split] or {}
        by_label = entry.get("by_label") or {}
        neg, pos = by_label.get("0") or {}, by_label.get("1") or {}
        rows.append([split, entry.get("patients", 0), entry.get("rows", 0), pos.get("patients", 0),
                     pos.get("rows", 0), neg.get("patients", 0), neg.get("rows", 0)])
    if audit.get("patients") is not None:
        rows.append(["all", audit.get("patients"), audit.get("rows", ""), "", "", "", ""])
    return {"overlap": audit.get("overlap_patients"), "rows": rows}


def example(example: Mapping[str, Any]) -> dict[str, Any]:
    """One Grad-CAM example: its figure and caption parts (ids, probability, cohort, peak, map size)."""
    image = np.asarray(example["image"])
    ids = example.get("ids") or {}
    kind = str(example.get("kind", ""))
    id_text = " / ".join(
        str(ids[k]) if k != "slice_index" else f"slice {ids[k]}"
        for k in ("patient_id", "study_uid", "view", "slice_index") if k in ids
    )
    peak = example.get("peak_in_box")
    resolution = example.get("map_resolution")
    return {
        "src": figures.example_figure(example),
        "kind": kind,
        "kind_text": KIND_TEXT.get(kind, ""),
        "probability": f"{float(example.get('probability', float('nan'))):.3f}",
        "cohort": example.get("cohort") or "",
        "peak": "" if peak is None else ("inside" if peak else "outside"),
        "ids": id_text,
        "map": None if not resolution else {
            "cells": f"{int(resolution[0])} x {int(resolution[1])}", "layer": example.get("layer") or "",
            "pixels": f"{image.shape[1]} x {image.shape[0]}"},
    }


def gradcam(metrics: Mapping[str, Any], examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The localisation and occlusion checks, and the examples grouped by kind (TP, FP, FN)."""
    loc = metrics.get("localization") or {}
    occ = metrics.get("occlusion") or {}
    note = loc.get("note")
    return {
        "loc": {"layer": loc.get("layer", "?"), "map_resolution": loc.get("map_resolution"),
                "fraction": loc.get("fraction"), "hits": loc.get("hits", 0), "n": loc.get("n", 0),
                "n_no_signal": loc.get("n_no_signal"),
                "reason": loc.get("reason", "no boxed tumour slice"),
                "chance": (loc.get("references") or {}).get("chance_fraction"),
                "brightest": (loc.get("references") or {}).get("brightest_fraction"),
                "brightest_hits": (loc.get("references") or {}).get("brightest_hits"),
                "brightest_n": (loc.get("references") or {}).get("n")} if loc else None,
        "loc_note": note[0].upper() + note[1:] if note else "",
        "occlusion": {key: occ.get(key) for key in (
            "mean_drop", "mean_probability", "mean_probability_hidden", "n", "n_called_positive", "flips",
            "flip_fraction")} | {"reason": occ.get("reason", "no boxed tumour image" if occ.get("mean_drop") is None
                                                else ""), "control": occ.get("control")} if occ else None,
        "any": bool(examples),
        "kinds": [(kind, KIND_TEXT[kind], [example(e) for e in examples if e.get("kind") == kind])
                  for kind in ("TP", "FP", "FN")] if examples else [],
    }


def _flatten_settings(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested settings as ``("train.model.model", "vgg16")`` rows; lists joined, ``None`` as ``"none"``."""
    if isinstance(value, Mapping):
        out: list[tuple[str, Any]] = []
        for key in sorted(value, key=str):
            out += _flatten_settings(value[key], f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(value, (list, tuple)):
        return [(prefix, ", ".join(str(v) for v in value))]
    return [(prefix, "none" if value is None else value)]


def configuration(config: Mapping[str, Any], metrics: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The settings the run was trained and evaluated with, one row each."""
    return _flatten_settings(config) + [
        ("evaluation.threshold", metrics.get("threshold")),
        ("evaluation.aggregate", metrics.get("aggregate")),
        ("evaluation.ci", metrics.get("ci")),
        ("evaluation.bootstrap", n_resamples(metrics)),
        ("evaluation.bootstrap_seed", (metrics.get("bootstrap") or {}).get("seed")),
    ]
