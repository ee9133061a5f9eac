"""The deployment's figure: each evaluated volume scored over all its frames, as ``tomoflow score`` does.

The study's method evaluates one slice per volume (for a positive, the slice the radiologist
boxed); a deployment never knows that slice. Here every validation and test volume of the
manifest is read again from its DICOM (every ``frame_stride``-th frame, the run's PNG and input
sizes, :func:`tasks.score.volumes.score_list` and its per-volume cache, shared with ``score``),
and combined per volume by the max and by the mean of the ``topk`` highest frames.

:func:`whole_volume_level` is the ``levels.whole_volume`` entry of ``metrics.json``: the max's
metrics at the operating threshold with patient-bootstrap intervals and the null (frame scores
shuffled across frames, combined the same way: what frame counts alone are worth), the top-k
mean beside it, a trivial whole-volume score (the slice-level baseline's chosen brightness
score, maximised over the same frames) and, for positive volumes with a box, where the top
frame fell relative to the boxed slice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.core.config import EvaluateConfig
from tasks.core.schema import VOLUME_KEY

#: File of the evaluated volumes' frame scores in the evaluation folder.
FRAMES_NAME = "volume_frames.parquet"


def manifest_volumes(manifest: pd.DataFrame, data_root: str | os.PathLike[str] | None,
                     splits: tuple[str, ...] = ("validation", "test")) -> pd.DataFrame:
    """One row per (non-augmented) volume of ``splits``: ids, ``path`` to its DICOM, ``status``, label, box slice."""
    frame = manifest.reset_index(drop=True)
    keep = frame["split"].isin(list(splits)).fillna(False).astype(bool)
    if "augmented_from" in frame.columns:
        keep &= frame["augmented_from"].isna()
    rows = frame.loc[keep]
    records = []
    for key, group in rows.groupby(list(VOLUME_KEY), sort=True):
        first = group.iloc[0]
        boxed = group["box_slice"].dropna() if "box_slice" in group.columns else pd.Series(dtype="Int32")
        source = first.get("source_path")
        path, status = None, None
        if data_root is None:
            status = "missing: no data root (pass --data-root, where the manifest's DICOMs are)"
        elif source is None or pd.isna(source):
            status = "missing: the manifest has no source_path"
        else:
            candidate = Path(data_root) / str(source)
            path, status = (str(candidate), None) if candidate.is_file() else (None, f"missing: {source}")
        records.append({**dict(zip(VOLUME_KEY, (str(k) for k in key))), "path": path, "listed_by": "manifest",
                        "status": status, "split": str(first["split"]), "label": int(group["label"].max()),
                        "cohort": None if pd.isna(first.get("cohort")) else str(first.get("cohort")),
                        "box_slice": int(boxed.iloc[0]) if len(boxed) else None})
    return pd.DataFrame(records, columns=[*VOLUME_KEY, "path", "listed_by", "status", "split", "label", "cohort",
                                          "box_slice"])


def frame_table(volumes: pd.DataFrame, frames: pd.DataFrame, status: pd.DataFrame) -> pd.DataFrame:
    """The frame scores with their volume's ids, split, label, cohort and box slice (``volume_frames.parquet``)."""
    base = volumes.reset_index(drop=True).assign(status=status["status"].to_numpy(),
                                                 n_frames=status["n_frames"].to_numpy())
    ids = base.iloc[frames["volume"].to_numpy()].reset_index(drop=True)
    out = ids[[*VOLUME_KEY, "split", "label", "cohort", "box_slice", "n_frames"]].copy()
    out["slice_index"] = frames["frame"].astype("int32").to_numpy()
    for column in frames.columns:
        if column == "probability" or column.startswith("trivial__"):
            out[column] = frames[column].to_numpy()
    return out


def volume_scores(frames: pd.DataFrame, topk: int, score: str = "probability") -> pd.DataFrame:
    """Per volume: ids, label, split, ``max``, ``topk`` (mean of the ``topk`` highest), ``top_frame``, ``box_slice``."""
    def one(group: pd.DataFrame) -> pd.Series:
        values = group[score].to_numpy(float)
        order = np.argsort(-values, kind="stable")
        return pd.Series({"max": float(values[order[0]]), "topk": float(values[order[:max(1, topk)]].mean()),
                          "top_frame": int(group["slice_index"].to_numpy()[order[0]])})

    keys = [*VOLUME_KEY, "split", "label"]
    table = frames.groupby(keys, sort=True, dropna=False).apply(one, include_groups=False).reset_index()
    box = frames.groupby(list(VOLUME_KEY), sort=True)["box_slice"].first().reset_index()
    return table.merge(box, on=list(VOLUME_KEY), how="left")


def top_frame_offsets(volumes: pd.DataFrame, stride: int) -> dict[str, Any]:
    """Where the top frame fell relative to the boxed slice, over positive volumes with a box."""
    boxed = volumes[(volumes["label"] == 1) & volumes["box_slice"].notna()]
    if boxed.empty:
        return {"n": 0, "offsets": [], "median_abs": None, "within_stride": None,
                "note": "no positive volume with a boxed slice"}
    offsets = (boxed["top_frame"].astype(int) - boxed["box_slice"].astype(int)).tolist()
    absolute = np.abs(np.asarray(offsets))
    return {"n": len(offsets), "offsets": sorted(int(o) for o in offsets),
            "median_abs": float(np.median(absolute)),
            "within_stride": float(np.mean(absolute < max(1, int(stride)))),
            "within_5": float(np.mean(absolute <= 5)),
            "note": f"top frame minus boxed slice (frames); frames read every {stride}"}


def _auc_block(units: pd.DataFrame, column: str, threshold: float | None, *, bootstrap: int, ci: float,
               seed: int) -> dict[str, Any]:
    from tasks.evaluate.metrics_bootstrap import bootstrap_intervals
    from tasks.evaluate.metrics_point import binary_metrics

    table = units.assign(probability=units[column], slice_index=0)
    point = binary_metrics(table["label"], table["probability"], 0.5 if threshold is None else threshold)
    boot = bootstrap_intervals(table, "volume", "max", threshold=0.5 if threshold is None else threshold,
                               n=bootstrap, ci=ci, seed=seed)
    keep = ("roc_auc",) if threshold is None else ("roc_auc", "sensitivity", "specificity", "accuracy")
    return {"metrics": {m: point[m] for m in keep}, "intervals": {m: boot["intervals"].get(m) for m in keep},
            "confusion": point["confusion"] if threshold is not None else None}


def whole_volume_level(frames: pd.DataFrame, *, threshold: float, threshold_source: str, stride: int, topk: int,
                       trivial_score: str | None, bootstrap: int, ci: float, seed: int, calibration_bins: int,
                       n_listed: int, not_scored: dict[str, int]) -> dict[str, Any]:
    """``levels.whole_volume`` of ``metrics.json`` from the evaluated split's frame scores."""
    from tasks.evaluate.metrics import _level_result
    from tasks.evaluate.metrics_bootstrap import NULL_DRAWS

    entry = _level_result(frames, "volume", "max", threshold, bootstrap=bootstrap, ci=ci, seed=seed,
                          calibration_bins=calibration_bins, null_draws=NULL_DRAWS)
    units = volume_scores(frames, topk)
    entry.update({
        "combine": "max", "frame_stride": int(stride), "topk": int(topk), "frames_scored": int(len(frames)),
        "volumes_listed": int(n_listed), "volumes_not_scored": not_scored,
        "threshold": float(threshold), "threshold_source": threshold_source,
        "topk_mean": _auc_block(units, "topk", threshold, bootstrap=bootstrap, ci=ci, seed=seed),
        "top_frame_vs_box": top_frame_offsets(units, stride),
        "trivial": None,
    })
    column = f"trivial__{trivial_score}" if trivial_score else None
    if column and column in frames.columns:
        trivial_units = volume_scores(frames, topk, score=column)
        entry["trivial"] = {"score": trivial_score, "combine": "max",
                            **_auc_block(trivial_units, "max", None, bootstrap=bootstrap, ci=ci, seed=seed)}
    return entry


def score_evaluated_volumes(checkpoint: str, manifest: str, *, run_dir: str, png_size: int, image_size: int,
                            out_dir: str, cfg: EvaluateConfig) -> Path:
    """Every validation and test volume of ``manifest`` scored over all its frames: ``out_dir``/:data:`FRAMES_NAME`.

    Read from the DICOMs under ``cfg.data_root`` (else the data root prepare read) at the run's
    PNG and input sizes, through ``tomoflow score``'s per-volume cache (shared with ``score``);
    volumes that cannot be scored keep a row with their status, and are counted in a warning.
    """
    from models.training.checkpoint import load_classifier
    from models.training.engine import resolve_device
    from tasks.core.files import atomic_write_parquet
    from tasks.evaluate.inputs import recorded_data_root
    from tasks.infra.lifecycle import run_logger
    from tasks.core.digest import sha256_file
    from tasks.score.frames import default_workers
    from tasks.score.run import cache_dir_for
    from tasks.score.volumes import score_list

    volumes = manifest_volumes(pd.read_parquet(manifest), cfg.data_root or recorded_data_root(Path(manifest)))
    device = resolve_device(cfg.device)
    frames, status = score_list(volumes, model=load_classifier(checkpoint, device=device),
                                checkpoint_sha=sha256_file(checkpoint), png_size=png_size, input_size=image_size,
                                stride=cfg.frame_stride, cache_dir=cache_dir_for(run_dir, out_dir),
                                batch_size=cfg.batch_size, device=device, workers=min(1, default_workers()))
    missing = status["status"].ne("scored")
    if missing.any():
        run_logger(__name__).warning(
            "whole-volume level: %d of %d volumes not scored (%s)", int(missing.sum()), len(status),
            "; ".join(sorted({str(x).split(":")[0] for x in status["status"][missing]})))
    table = frame_table(volumes, frames, status)
    table.attrs = {}
    return atomic_write_parquet(Path(out_dir) / FRAMES_NAME, table)
