"""Slice extraction: decode only the selected frames, write PNGs and per-volume lineage.

One call of :func:`extract_shard` handles a shard of volumes (never one task per slice).
Each finished volume leaves a small JSON record beside its PNGs, written last and
atomically, keyed on the volume file's fingerprint, the frame rule and the image size:

* a rerun with nothing changed finds the records and decodes nothing (PNGs untouched);
* adding patients extracts only theirs, whatever shard they land in;
* a run killed mid-way resumes at the first volume without a record.

Volumes that cannot be read become reject records; the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable

from tasks.config import CODE_VERSION
from tasks.dicom import read_frames, read_info
from tasks.io import atomic_write_json, atomic_write_png
from tasks.slices import VolumeResolver, resolve_frames, volume_key

log = logging.getLogger(__name__)

SLICES_DIR = "slices"
RECORD_NAME = "volume.json"


def volume_dir(out_dir: str | os.PathLike[str], patient_id: str, study_uid: str, view: str) -> Path:
    """Folder of one volume's PNGs and record, relative names safe for any id."""
    return Path(out_dir) / SLICES_DIR / _safe(patient_id) / _safe(study_uid) / _safe(view)


_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _safe(part: str) -> str:
    """A visible folder name for an id: the id itself when it is plain, else a cleaned,
    hashed form (``../../x`` -> ``x-<8 hex>``) so two ids never share a folder and no id
    makes a hidden folder or climbs out of ``slices/``."""
    text = str(part)
    if _SAFE_ID.match(text) and not text.endswith("."):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).lstrip("._-")[:60].rstrip(".") or "id"
    return f"{cleaned}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def _volume_key(job: dict[str, Any], path: Path | None, image_size: int, seed: int) -> str:
    stat = path.stat() if path is not None and path.exists() else None
    payload = {
        "code": CODE_VERSION,
        "path": str(path) if path else None,
        "size": stat.st_size if stat else None,
        "mtime_ns": stat.st_mtime_ns if stat else None,
        "rule": job["frames_rule"],
        "view": job["view"],
        "image_size": image_size,
        "seed": seed if str(job["frames_rule"]).startswith("fraction") else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _load_record(record_path: Path, key: str) -> dict[str, Any] | None:
    """The stored record if it matches ``key`` and every PNG it lists still exists."""
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("key") != key:
        return None
    base = record_path.parent
    if any(not (base / row["file"]).is_file() for row in record.get("frames", [])):
        return None
    return record


def finished_record(
    job: dict[str, Any], *, data_root: str | os.PathLike[str], out_dir: str | os.PathLike[str],
    image_size: int, seed: int, resolver: VolumeResolver,
) -> Path | None:
    """The record of ``job`` if an earlier run already extracted it with the same inputs."""
    ids = (str(job["patient_id"]), str(job["study_uid"]), str(job["view"]))
    path, _ = resolver.resolve(job.get("descriptive_path"), job.get("classic_path"), ids[0], study_uid=ids[1])
    if path is None:
        return None  # missing volumes are looked for again on every run
    record_path = volume_dir(out_dir, *ids) / RECORD_NAME
    key = _volume_key(job, path, image_size, seed)
    return record_path if _load_record(record_path, key) is not None else None


def split_finished(
    jobs: list[dict[str, Any]], *, data_root: str, out_dir: str, image_size: int, seed: int
) -> tuple[list[str], list[dict[str, Any]]]:
    """Split the plan into records already done (same inputs) and jobs still to extract.

    This costs a directory listing and a small JSON read per volume, so a rerun with
    nothing changed starts no worker at all.
    """
    resolver = VolumeResolver(data_root)
    done: list[str] = []
    todo: list[dict[str, Any]] = []
    for job in jobs:
        record = finished_record(job, data_root=data_root, out_dir=out_dir, image_size=image_size,
                                 seed=seed, resolver=resolver)
        if record is None:
            todo.append(job)
        else:
            done.append(str(record))
    return done, todo


def extract_volume(
    job: dict[str, Any], *, data_root: str | os.PathLike[str], out_dir: str | os.PathLike[str],
    image_size: int, seed: int, resolver: VolumeResolver | None = None,
) -> tuple[Path, bool]:
    """Extract one volume's selected frames; return (record path, whether work was done).

    Args:
        job: One row of the slice plan: ``patient_id, study_uid, view, descriptive_path,
            classic_path, frames_rule``.
        data_root: The dataset root the CSV paths are relative to.
        out_dir: The run's output folder (PNGs go under ``out_dir/slices``).
        image_size: Side of the letterboxed output.
        seed: Seed for sampled frame rules.
        resolver: Path resolver to reuse across a shard (caches directory listings).
    """
    ids = (str(job["patient_id"]), str(job["study_uid"]), str(job["view"]))
    vdir = volume_dir(out_dir, *ids)
    record_path = vdir / RECORD_NAME
    resolver = resolver or VolumeResolver(data_root)
    path, how = resolver.resolve(
        job.get("descriptive_path"), job.get("classic_path"), ids[0], study_uid=ids[1]
    )
    key = _volume_key(job, path, image_size, seed)
    cached = _load_record(record_path, key)
    if cached is not None:
        return record_path, False

    base = {"key": key, "patient_id": ids[0], "study_uid": ids[1], "view": ids[2], "resolved_by": how}
    if path is None:
        record = {**base, "source_path": job.get("descriptive_path"), "reject": f"missing volume: {how}",
                  "frames": []}
        atomic_write_json(record_path, record)
        return record_path, True
    source = _relative(path, data_root)
    try:
        info = read_info(path)
        frames = resolve_frames(
            str(job["frames_rule"]), info.n_frames, seed=seed, key=volume_key(*ids)
        )
        rows = []
        for frame in read_frames(path, frames, view=ids[2], image_size=image_size):
            name = f"{frame.index:04d}.png"
            atomic_write_png(vdir / name, frame.image)
            rows.append({
                "slice_index": frame.index, "file": name,
                "window_center": frame.window_center, "window_width": frame.window_width,
                "window_source": frame.window_source, "rotated": bool(frame.rotated),
                "scale": float(frame.scale), "pad_x": int(frame.pad_x), "pad_y": int(frame.pad_y),
            })
        record = {**base, "source_path": source, "n_frames": info.n_frames, "rows": info.rows,
                  "columns": info.columns, "frames": rows, "reject": None}
    except (ValueError, NotImplementedError, OSError) as exc:
        # ValueError covers DicomReadError; the message names the file and the fault.
        log.warning("rejected %s/%s/%s: %s", *ids, exc)
        record = {**base, "source_path": source, "reject": str(exc), "frames": []}
    atomic_write_json(record_path, record)
    return record_path, True


def _relative(path: Path, root: str | os.PathLike[str]) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def extract_shard(
    jobs: Iterable[dict[str, Any]], *, data_root: str, out_dir: str, image_size: int, seed: int
) -> dict[str, Any]:
    """Extract a shard of volumes; return the record paths and how many volumes were decoded."""
    records: list[str] = []
    decoded = 0
    resolver = VolumeResolver(data_root)
    for job in jobs:
        record_path, worked = extract_volume(
            job, data_root=data_root, out_dir=out_dir, image_size=image_size, seed=seed, resolver=resolver
        )
        records.append(str(record_path))
        decoded += int(worked)
    return {"records": records, "decoded": decoded}


def remove_stale_temporaries(out_dir: str | os.PathLike[str]) -> int:
    """Delete temporary files a killed run left behind (our atomic writes' ``.NAME.*.tmp``)."""
    removed = 0
    root = Path(out_dir)
    if not root.exists():
        return 0
    for tmp in root.rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def shard_jobs(jobs: list[dict[str, Any]], shard_size: int) -> list[list[dict[str, Any]]]:
    """Split the plan into shards in a stable order (patients together)."""
    ordered = sorted(jobs, key=lambda j: (str(j["patient_id"]), str(j["study_uid"]), str(j["view"])))
    return [ordered[i:i + shard_size] for i in range(0, len(ordered), shard_size)]
