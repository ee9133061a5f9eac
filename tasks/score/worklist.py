"""``score``'s tables: the run's settings, volume and study rows, and the summary.

* ``frame_scores.parquet``: one row per scored frame: ``patient_id``, ``study_uid``, ``view``,
  ``frame``, ``probability``;
* ``volumes.parquet``: one row per listed or found volume: :data:`VOLUME_COLUMNS`;
* ``worklist.csv``: one row per study, highest score first: :data:`WORKLIST_COLUMNS`;
* ``score_summary.json``: :func:`summary`.

A volume's ``score_max`` is its highest frame probability, ``score_topk`` the mean of its
``k`` highest (fewer when it has fewer frames), ``top_frame`` the frame of the highest, and
``flagged`` whether ``score_max`` reaches the run's operating threshold. A study takes the
highest of its volumes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Columns of ``volumes.parquet``.
VOLUME_COLUMNS = ("patient_id", "study_uid", "view", "n_frames", "frames_scored", "score_max", "score_topk",
                  "top_frame", "flagged", "status", "reused", "listed_by")
#: Columns of ``worklist.csv``.
WORKLIST_COLUMNS = ("patient_id", "study_uid", "views", "score_max", "score_topk", "top_view", "top_frame",
                    "flagged", "status")
#: Frames averaged by ``score_topk`` unless the run says otherwise.
DEFAULT_TOPK = 3


def run_settings(run_dir: str | os.PathLike[str], *, threshold: float | None = None) -> dict[str, Any]:
    """What scoring needs from a training run: checkpoint and its SHA-256, PNG and input sizes, threshold.

    The PNG size is the prepared manifest's (``cohort_summary.json``), the input size the
    training's; the threshold the one evaluation chose on validation (``threshold.json``), else
    0.5, unless ``threshold`` overrides it. ``threshold_source`` says which.

    Raises:
        ValueError: No run folder, no ``config.json`` or no usable checkpoint (one line, what to do).
    """
    from tasks.core.run_folder import chosen_checkpoint
    from tasks.evaluate.threshold import recorded_threshold
    from tasks.core.digest import sha256_file

    run = Path(run_dir)
    if not run.is_dir():
        raise ValueError(f"--run {run}: not a folder; pass a training run folder (tomoflow train --out RUN)")
    config_path = run / "config.json"
    if not config_path.is_file():
        raise ValueError(f"--run {run}: no config.json: not a training run folder (tomoflow train --out RUN)")
    try:
        conf = json.loads(config_path.read_text())
        input_size = int(conf["train"]["image_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--run {run}: config.json is unreadable or has no train.image_size ({exc}); "
                         "train the run again") from None
    checkpoint = chosen_checkpoint(run)
    if not checkpoint.is_file():
        raise ValueError(f"--run {run}: neither best.pt nor last.pt exists: no usable checkpoint; train the model first")
    png_size, png_source = input_size, "the input size (the prepared folder's cohort_summary.json is gone)"
    summary = Path(str(conf.get("manifest") or "")).parent / "cohort_summary.json"
    if conf.get("manifest") and summary.is_file():
        try:
            png_size, png_source = int(json.loads(summary.read_text())["image_size"]), str(summary.name)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if threshold is not None:
        value, source = float(threshold), "--threshold (overrides the run's recorded threshold)"
    else:
        value, source = recorded_threshold(run)
    return {"run": str(run), "checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
            "png_size": png_size, "png_size_source": png_source, "input_size": input_size,
            "threshold": value, "threshold_source": source}


def volume_rows(volumes: pd.DataFrame, frames: pd.DataFrame, status: pd.DataFrame, *, threshold: float,
                topk: int = DEFAULT_TOPK) -> pd.DataFrame:
    """One row per volume (:data:`VOLUME_COLUMNS`) from the list, its frame scores and its status."""
    base = volumes.reset_index(drop=True)
    out = base[["patient_id", "study_uid", "view"]].astype("string").copy()
    stats = frames.groupby("volume")["probability"]
    out["n_frames"] = pd.array(status["n_frames"].to_numpy(), dtype="Int32")
    out["frames_scored"] = pd.array(stats.size().reindex(out.index).fillna(0).astype(int), dtype="Int32")
    out["score_max"] = stats.max().reindex(out.index).astype("float64")
    out["score_topk"] = stats.apply(lambda s: float(np.sort(s.to_numpy())[::-1][:max(1, topk)].mean())
                                    ).reindex(out.index).astype("float64")
    top = frames.loc[frames.groupby("volume")["probability"].idxmax()] if len(frames) else frames
    out["top_frame"] = pd.array(top.set_index("volume")["frame"].reindex(out.index), dtype="Int32")
    scored = status["status"].eq("scored").to_numpy()
    out["flagged"] = pd.array(np.where(scored, out["score_max"].ge(threshold), pd.NA), dtype="boolean")
    out["status"] = status["status"].astype("string").to_numpy()
    out["reused"] = status["reused"].astype(bool).to_numpy()
    out["listed_by"] = base["listed_by"].astype("string").to_numpy()
    return out[list(VOLUME_COLUMNS)]


def study_rows(volumes: pd.DataFrame) -> pd.DataFrame:
    """One row per study (:data:`WORKLIST_COLUMNS`), highest ``score_max`` first, unscored studies last."""
    records = []
    for (patient, study), group in volumes.groupby(["patient_id", "study_uid"], sort=False, dropna=False):
        scored = group[group["status"].eq("scored")]
        failed = group[~group["status"].eq("scored")]
        if len(scored):
            best = scored.loc[scored["score_max"].idxmax()]
            status = "scored" if failed.empty else (
                f"scored; {len(failed)} of {len(group)} volumes not: " + "; ".join(
                    f"{v}: {str(s).split(':')[0]}" for v, s in zip(failed["view"], failed["status"])))
            values = (float(best["score_max"]), float(scored["score_topk"].max()), str(best["view"]),
                      int(best["top_frame"]), bool(scored["flagged"].fillna(False).any()))
        else:
            status = "not scored: " + "; ".join(f"{v}: {s}" for v, s in zip(failed["view"], failed["status"]))
            values = (np.nan, np.nan, None, None, None)
        records.append({"patient_id": patient, "study_uid": study,
                        "views": ",".join(str(v) for v in group["view"].dropna()),
                        "score_max": values[0], "score_topk": values[1], "top_view": values[2],
                        "top_frame": values[3], "flagged": values[4], "status": status})
    table = pd.DataFrame(records, columns=list(WORKLIST_COLUMNS))
    table["top_frame"] = pd.array(table["top_frame"], dtype="Int32")
    table["flagged"] = pd.array(table["flagged"], dtype="boolean")
    return table.sort_values("score_max", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def frame_rows(volumes: pd.DataFrame, frames: pd.DataFrame) -> pd.DataFrame:
    """``frame_scores.parquet``: the volume's ids, ``frame``, ``probability``."""
    ids = volumes.reset_index(drop=True)[["patient_id", "study_uid", "view"]].astype("string")
    out = ids.iloc[frames["volume"].to_numpy()].reset_index(drop=True)
    out["frame"] = frames["frame"].astype("int32").to_numpy()
    out["probability"] = frames["probability"].astype("float64").to_numpy()
    return out


def summary(volumes: pd.DataFrame, settings: dict[str, Any], *, source: str, stride: int, topk: int,
            seconds: float) -> dict[str, Any]:
    """``score_summary.json``: counts ``listed``, ``scored``, ``reused``, ``failed``, and what scored them."""
    scored = volumes["status"].eq("scored")
    failed = volumes.loc[~scored, "status"].astype(str).str.split(":").str[0].value_counts().sort_index()
    return {
        "listed": int(len(volumes)), "scored": int(scored.sum()), "reused": int((scored & volumes["reused"]).sum()),
        "failed": int((~scored).sum()), "failed_by_reason": {str(k): int(v) for k, v in failed.items()},
        "flagged": int(volumes["flagged"].fillna(False).sum()),
        "studies": int(volumes.groupby(["patient_id", "study_uid"], dropna=False).ngroups),
        "listed_by": source, "run": settings["run"], "checkpoint": settings["checkpoint"],
        "checkpoint_sha256": settings["checkpoint_sha256"], "threshold": settings["threshold"],
        "threshold_source": settings["threshold_source"], "png_size": settings["png_size"],
        "input_size": settings["input_size"], "stride": int(stride), "topk": int(topk),
        "frames_scored": int(volumes["frames_scored"].fillna(0).sum()), "seconds": round(float(seconds), 3),
    }
