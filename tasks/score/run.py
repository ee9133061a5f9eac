"""``tomoflow score`` as plain functions: list, score (cached per volume), and write the worklist.

:func:`score_studies` is the whole job; the ``score-studies`` flow (:mod:`flows.score`) calls
its parts as tasks.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.core.score_config import ScoreConfig

log = logging.getLogger(__name__)

FRAME_SCORES = "frame_scores.parquet"
VOLUMES = "volumes.parquet"
WORKLIST_CSV = "worklist.csv"
WORKLIST_HTML = "worklist.html"
SUMMARY = "score_summary.json"


def cache_dir_for(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """The run's per-volume cache (shared with evaluate), or ``OUT/.volume-scores`` when the run is read-only."""
    from tasks.score.volumes import CACHE_NAME, run_cache_dir

    cache = run_cache_dir(run_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if os.access(cache, os.W_OK):
            return cache
    except OSError:
        pass
    return Path(out_dir) / CACHE_NAME


def score_frames(cfg: ScoreConfig, volumes: pd.DataFrame, settings: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every listed volume's frame scores and status (:func:`tasks.score.volumes.score_list`)."""
    from models.training.checkpoint import load_classifier
    from models.training.engine import resolve_device
    from tasks.score.frames import default_workers
    from tasks.score.volumes import score_list

    device = resolve_device(cfg.device)
    model = load_classifier(settings["checkpoint"], device=device)

    def progress(done: int, total: int) -> None:
        if done == total or done % 25 == 0:
            log.info("scored %d of %d volumes", done, total)

    return score_list(volumes, model=model, checkpoint_sha=settings["checkpoint_sha256"],
                      png_size=settings["png_size"], input_size=settings["input_size"], stride=cfg.stride,
                      cache_dir=cache_dir_for(cfg.run_dir, cfg.output_dir), batch_size=cfg.batch_size, device=device,
                      workers=default_workers() if cfg.workers is None else cfg.workers,
                      autocast=cfg.autocast and device.type == "cuda", progress=progress)


def write_outputs(cfg: ScoreConfig, volumes: pd.DataFrame, source: str, frames: pd.DataFrame, status: pd.DataFrame,
                  settings: dict[str, Any], seconds: float) -> dict[str, str]:
    """Write the five outputs; return their paths."""
    from models.training.checkpoint import load_classifier
    from tasks.core.files import atomic_write_json, atomic_write_parquet, atomic_write_text
    from tasks.core.pseudonyms import root_salt
    from tasks.score.page import MAX_THUMBNAILS, top_frame_views, write_worklist_html
    from tasks.score.worklist import frame_rows, study_rows, summary, volume_rows

    out = Path(cfg.output_dir)
    vols = volume_rows(volumes, frames, status, threshold=settings["threshold"], topk=cfg.topk)
    studies = study_rows(vols)
    paths = {
        "frame_scores": atomic_write_parquet(out / FRAME_SCORES, frame_rows(volumes, frames)),
        "volumes": atomic_write_parquet(out / VOLUMES, vols),
        "worklist_csv": atomic_write_text(out / WORKLIST_CSV, studies.to_csv(index=False)),
    }
    facts = summary(vols, settings, source=source, stride=cfg.stride, topk=cfg.topk,
                    seconds=seconds + 0.0)
    where = {(str(r.patient_id), str(r.study_uid), str(r.view)): r.path
             for r in volumes.reset_index(drop=True).itertuples()}
    shown = studies[studies["status"].str.startswith("scored")].head(MAX_THUMBNAILS)
    items = [{"path": where[(str(r.patient_id), str(r.study_uid), str(r.top_view))], "view": str(r.top_view),
              "frame": int(r.top_frame)} for r in shown.itertuples()]
    images = top_frame_views(load_classifier(settings["checkpoint"]), items, png_size=settings["png_size"],
                             input_size=settings["input_size"]) if items else []
    paths["worklist_html"] = write_worklist_html(out / WORKLIST_HTML, studies, images, facts, salt=root_salt(out))
    paths["summary"] = atomic_write_json(out / SUMMARY, facts)
    return {k: str(v) for k, v in paths.items()}


def score_studies(cfg: ScoreConfig) -> dict[str, str]:
    """The whole ``score`` job without Prefect: settings, volume list, scores, outputs."""
    from tasks.score.inputs import list_volumes
    from tasks.score.worklist import run_settings

    start = time.perf_counter()
    settings = run_settings(cfg.run_dir, threshold=cfg.threshold)
    volumes, source = list_volumes(cfg.data_root)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    frames, status = score_frames(cfg, volumes, settings)
    return write_outputs(cfg, volumes, source, frames, status, settings, time.perf_counter() - start)
