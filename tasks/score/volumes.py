"""Scoring a list of volumes with a per-volume cache: what ``score`` and evaluate's whole-volume level share.

Each volume's frame scores are cached in one file, ``CACHE/<key[:2]>/<key>.parquet``, keyed on
the SHA-256 of the DICOM file's bytes, the checkpoint's SHA-256 and the settings that change
the scores (PNG size, input size, frame stride, view, :data:`tasks.core.config.CODE_VERSION`).
A file is written as soon as its volume is scored, so a killed run loses at most the volumes
in flight and a rerun scores only what is new (``reused`` counts the rest). The cache lives in
the run folder (``RUN/.volume-scores``) by default, so ``tomoflow score`` and ``evaluate``
reuse each other's work. A file's SHA-256 is remembered beside its stat (size, mtime, ctime,
inode) as prepare does (:mod:`tasks.prepare.source_hash`), so an unchanged file is not read twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from tasks.core.config import CODE_VERSION
from tasks.core.files import atomic_write_json, atomic_write_parquet
from tasks.evaluate.trivial_scores import SCORES
from tasks.core.digest import sha256_bytes
from tasks.prepare.source_hash import source_sha256
from tasks.score.frames import VolumeJob, frames_of, score_volumes

#: The cache folder's name inside a run folder.
CACHE_NAME = ".volume-scores"


def run_cache_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The per-volume score cache of a run: ``RUN/.volume-scores``."""
    return Path(run_dir) / CACHE_NAME


def cache_key(source_sha: str, checkpoint_sha: str, settings: dict[str, Any]) -> str:
    """The cache key of one volume's scores."""
    blob = json.dumps({"code": CODE_VERSION, "source": source_sha, "checkpoint": checkpoint_sha, **settings},
                      sort_keys=True).encode()
    return sha256_bytes(blob)


def _content_hash(path: str, cache_dir: Path) -> str:
    """SHA-256 of ``path``, reusing the one remembered for the same stat."""
    memo = cache_dir / "hashes" / (sha256_bytes(os.path.abspath(path).encode())[:32] + ".json")
    record = None
    if memo.is_file():
        try:
            record = json.loads(memo.read_text())
        except (OSError, ValueError):
            record = None
    sha, stat = source_sha256(path, record)
    if record is None or record.get("source_sha256") != sha or record.get("source_stat") != stat:
        atomic_write_json(memo, {"source_sha256": sha, "source_stat": stat})
    return sha


def _status_row(status: str | None, n_frames: int | None = None, reused: bool = False,
                source_sha: str | None = None) -> dict[str, Any]:
    return {"status": status or "scored", "n_frames": n_frames, "reused": reused, "source_sha256": source_sha}


def score_list(volumes: pd.DataFrame, *, model: Any, checkpoint_sha: str, png_size: int, input_size: int,
               stride: int, cache_dir: str | os.PathLike[str], batch_size: int = 32, device: Any = "cpu",
               workers: int = 0, autocast: bool = False,
               progress: Callable[[int, int], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores of every frame of every volume in ``volumes`` (rows with a ``path`` and no ``status``).

    Args:
        volumes: ``patient_id``, ``study_uid``, ``view``, ``path`` and ``status`` (None: to score).
        model: The classifier.
        checkpoint_sha: SHA-256 of the checkpoint (part of every cache key).
        png_size, input_size: The run's PNG (letterbox) size and network input size.
        stride: Every ``stride``-th frame.
        cache_dir: The per-volume cache folder.
        batch_size, device, workers, autocast: As for :func:`tasks.score.frames.score_volumes`.
        progress: Called with ``(done, total)`` after each volume.

    Returns:
        ``(frames, status)``: one row per scored frame (``volume`` (the row's position in
        ``volumes``), ``frame``, ``probability`` and one ``trivial__<score>`` column per
        trivial score), and one row per volume (aligned with ``volumes``): ``status``
        (``scored`` or why not), ``n_frames``, ``reused``, ``source_sha256``.
    """
    from tasks.reader.header import read_info

    cache = Path(cache_dir)
    rows = volumes.reset_index(drop=True)
    status: list[dict[str, Any]] = [_status_row(None) for _ in range(len(rows))]
    parts: dict[int, pd.DataFrame] = {}
    jobs: list[VolumeJob] = []
    targets: dict[int, Path] = {}
    settings = {"png_size": int(png_size), "input_size": int(input_size), "stride": int(stride)}
    for i, row in rows.iterrows():
        if isinstance(row.get("status"), str) and row["status"]:
            status[i] = _status_row(row["status"])
            continue
        path = str(row["path"])
        try:
            n_frames = read_info(path).n_frames
            sha = _content_hash(path, cache)
        except (ValueError, NotImplementedError, OSError) as exc:
            status[i] = _status_row(f"unreadable: {exc}")
            continue
        if n_frames < 1:
            status[i] = _status_row("no frames: the file holds no frame", n_frames)
            continue
        key = cache_key(sha, checkpoint_sha, {**settings, "view": str(row["view"])})
        target = cache / key[:2] / f"{key}.parquet"
        status[i] = _status_row(None, n_frames, source_sha=sha)
        if target.is_file():
            try:
                parts[i] = pd.read_parquet(target)
                status[i]["reused"] = True
                continue
            except Exception:  # noqa: BLE001 - a damaged cache file is scored again
                pass
        targets[i] = target
        jobs.append(VolumeJob(key=i, path=path, view=str(row["view"]), frames=frames_of(n_frames, stride)))
    done = len(rows) - len(jobs)
    for result in score_volumes(model, jobs, png_size=png_size, input_size=input_size, batch_size=batch_size,
                                device=device, workers=workers, autocast=autocast):
        if result.error is not None:
            status[result.key].update(status=result.error)
        else:
            table = pd.DataFrame({"frame": pd.array(result.frames, dtype="int32"),
                                  "probability": pd.array(result.probabilities, dtype="float64")})
            for name in SCORES:
                table[f"trivial__{name}"] = [t[name] for t in result.trivial]
            atomic_write_parquet(targets[result.key], table)
            parts[result.key] = table
        done += 1
        if progress is not None:
            progress(done, len(rows))
    frames = [part.assign(volume=i) for i, part in sorted(parts.items())]
    columns = ["volume", "frame", "probability", *(f"trivial__{n}" for n in SCORES)]
    frame_table = (pd.concat(frames, ignore_index=True)[columns] if frames
                   else pd.DataFrame({c: pd.Series(dtype="float64") for c in columns}))
    frame_table["volume"] = frame_table["volume"].astype("int64")
    frame_table["frame"] = frame_table["frame"].astype("int32")
    return frame_table, pd.DataFrame(status)
