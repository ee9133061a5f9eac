"""Slice extraction: decode only the selected frames, write PNGs and per-volume lineage.

One call of :func:`extract_shard` handles a shard of volumes (never one task per slice).
Each finished volume leaves a small JSON record beside its PNGs, written last and
atomically, keyed on the SHA-256 of the volume file's bytes (:mod:`tasks.prepare.source_hash`), the
frame rule and the image size, and listing each PNG's size and SHA-256:

* a rerun with nothing changed finds the records and decodes nothing (PNGs untouched);
* adding patients extracts only theirs, whatever shard they land in;
* a run killed mid-way resumes at the first volume without a record;
* a changed volume (same name, size and mtime included) or a PNG that no longer holds the
  bytes its record names is extracted again.

Volumes that cannot be read become reject records; the run goes on. An error on the output
side (a full disk, permissions) is never a property of the volume: it stops the run with
:class:`~tasks.core.files.OutputPathError` and nothing is recorded, so the rerun extracts the volume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable

from tasks.core.config import CODE_VERSION
from tasks.reader.frames import read_frames
from tasks.reader.header import read_info
from tasks.core.files import OutputPathError, atomic_write_bytes, atomic_write_json, png_bytes
from tasks.prepare.locate import VolumeResolver
from tasks.prepare.frame_rules import resolve_frames, volume_key
from tasks.core.digest import sha256_bytes
from tasks.prepare.source_hash import png_matches, source_sha256

log = logging.getLogger(__name__)

SLICES_DIR = "slices"
#: zlib level of the slice PNGs. Once frames are decoded at a reduced resolution, PNG
#: encoding is a visible share of extraction (bench/prepare.py); level 1 encodes a 224 px
#: slice in about half the time of Pillow's default 6, for PNGs about a quarter larger.
PNG_COMPRESS_LEVEL = 1
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


def _volume_key(job: dict[str, Any], source_sha: str | None, image_size: int, seed: int,
                full_resolution: bool = False) -> str:
    """The record's key: the volume's content and the settings that shape its PNGs."""
    payload = {
        "code": CODE_VERSION,
        "source_sha256": source_sha,
        "rule": job["frames_rule"],
        "view": job["view"],
        "image_size": image_size,
        # The reduced decode gives (slightly) different pixels than the full one.
        "decode": "full" if full_resolution else "reduced-1",
        "seed": seed if str(job["frames_rule"]).startswith(("fraction", "pick")) else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _read_record(record_path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _current_key(job: dict[str, Any], path: Path | None, record: dict[str, Any] | None, image_size: int,
                 seed: int, full_resolution: bool) -> tuple[str, str | None, dict[str, int] | None]:
    """``(key, sha256, stat)`` of the volume as it is now (the hash reused while its stat holds)."""
    if path is None:
        return _volume_key(job, None, image_size, seed, full_resolution), None, None
    sha, stat = source_sha256(path, record)
    return _volume_key(job, sha, image_size, seed, full_resolution), sha, stat


def _load_record(record_path: Path, key: str, record: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The stored record if it matches ``key`` and every PNG it lists still holds its bytes."""
    record = record if record is not None else _read_record(record_path)
    if record is None or record.get("key") != key:
        return None
    base = record_path.parent
    for row in record.get("frames", []):
        if not png_matches(base / row["file"], row.get("bytes"), row.get("sha256")):
            return None
    return record


def finished_record(
    job: dict[str, Any], *, out_dir: str | os.PathLike[str],
    image_size: int, seed: int, resolver: VolumeResolver, full_resolution: bool = False,
) -> Path | None:
    """The record of ``job`` if an earlier run already extracted it with the same inputs."""
    ids = (str(job["patient_id"]), str(job["study_uid"]), str(job["view"]))
    path, _ = resolver.resolve(job.get("descriptive_path"), job.get("classic_path"), ids[0], study_uid=ids[1])
    if path is None:
        return None  # missing volumes are looked for again on every run
    record_path = volume_dir(out_dir, *ids) / RECORD_NAME
    record = _read_record(record_path)
    if record is None:
        return None  # never extracted: the worker hashes the file once, while extracting it
    key, _, _ = _current_key(job, path, record, image_size, seed, full_resolution)
    return record_path if _load_record(record_path, key, record) is not None else None


def split_finished(
    jobs: list[dict[str, Any]], *, data_root: str, out_dir: str, image_size: int, seed: int,
    full_resolution: bool = False, extra_roots: tuple[str, ...] = (),
) -> tuple[list[str], list[dict[str, Any]]]:
    """Split the plan into records already done (same inputs) and jobs still to extract.

    This costs a directory listing and a small JSON read per volume, so a rerun with
    nothing changed starts no worker at all.
    """
    resolver = VolumeResolver(data_root, extra_roots=tuple(extra_roots))
    done: list[str] = []
    todo: list[dict[str, Any]] = []
    for job in jobs:
        record = finished_record(job, out_dir=out_dir, image_size=image_size,
                                 seed=seed, resolver=resolver, full_resolution=full_resolution)
        if record is None:
            todo.append(job)
        else:
            done.append(str(record))
    return done, todo


def extract_volume(
    job: dict[str, Any], *, data_root: str | os.PathLike[str], out_dir: str | os.PathLike[str],
    image_size: int, seed: int, resolver: VolumeResolver | None = None, full_resolution: bool = False,
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
        full_resolution: Decode every frame in full (no reduced JPEG 2000 decode).
    """
    ids = (str(job["patient_id"]), str(job["study_uid"]), str(job["view"]))
    vdir = volume_dir(out_dir, *ids)
    record_path = vdir / RECORD_NAME
    resolver = resolver or VolumeResolver(data_root)
    path, how = resolver.resolve(
        job.get("descriptive_path"), job.get("classic_path"), ids[0], study_uid=ids[1]
    )
    earlier = _read_record(record_path)
    if path is None:
        key, sha, stat = _current_key(job, None, None, image_size, seed, full_resolution)
    else:
        try:
            key, sha, stat = _current_key(job, path, earlier, image_size, seed, full_resolution)
        except OSError as exc:  # the volume itself cannot be read (input side)
            key, sha, stat = _volume_key(job, None, image_size, seed, full_resolution), None, None
            record = {"key": key, "patient_id": ids[0], "study_uid": ids[1], "view": ids[2], "resolved_by": how,
                      "source_path": _relative(path, data_root), "frames": [],
                      "reject": f"unreadable: {exc.strerror or type(exc).__name__}"}
            _write_output(record_path, lambda: atomic_write_json(record_path, record))
            return record_path, True
    if _load_record(record_path, key, earlier) is not None:
        return record_path, False

    base = {"key": key, "patient_id": ids[0], "study_uid": ids[1], "view": ids[2], "resolved_by": how,
            "source_sha256": sha, "source_stat": stat}
    if path is None:
        reject = how if how.startswith("outside-data-root") else f"missing volume: {how}"
        record = {**base, "source_path": job.get("descriptive_path"), "reject": reject, "frames": []}
        _write_output(record_path, lambda: atomic_write_json(record_path, record))
        return record_path, True
    source = _relative(path, data_root)
    rows = []
    try:
        info = read_info(path)
        frames = resolve_frames(
            str(job["frames_rule"]), info.n_frames, seed=seed, key=volume_key(*ids)
        )
        blank: list[int] = []
        for frame in read_frames(path, frames, view=ids[2], image_size=image_size,
                                 full_resolution=full_resolution):
            if frame.is_blank():
                blank.append(int(frame.index))
                continue
            name = f"{frame.index:04d}.png"
            data = png_bytes(frame.image, compress_level=PNG_COMPRESS_LEVEL)
            _write_output(vdir / name, lambda: atomic_write_bytes(vdir / name, data))
            rows.append({
                "slice_index": frame.index, "file": name, "bytes": len(data), "sha256": sha256_bytes(data),
                "window_center": frame.window_center, "window_width": frame.window_width,
                "window_source": frame.window_source, "rotated": bool(frame.rotated),
                "scale": float(frame.scale), "pad_x": int(frame.pad_x), "pad_y": int(frame.pad_y),
                "decode_level": int(frame.decode_level), "decode_note": frame.decode_note,
            })
        if blank:
            raise ValueError(
                f"blank-frames: {len(blank)} of the {len(frames)} selected frames (first {blank[:5]}) hold one "
                "value only (all zero or constant pixel data): the volume carries no image to learn from or "
                "score; check the file (a failed export or anonymisation)")
        record = {**base, "source_path": source, "n_frames": info.n_frames, "rows": info.rows,
                  "columns": info.columns, "frames": rows, "reject": None}
    except OutputPathError:
        raise  # the output side failed: nothing about this volume is recorded
    except (ValueError, NotImplementedError, OSError) as exc:
        # ValueError covers DicomReadError; the message names the file and the fault.
        log.warning("rejected %s/%s/%s: %s", *ids, exc)
        record = {**base, "source_path": source, "reject": str(exc), "frames": []}
    _write_output(record_path, lambda: atomic_write_json(record_path, record))
    return record_path, True


def _write_output(target: Path, write: Any) -> None:
    """Run ``write()``; an OS error is the output's fault, never the volume's: stop the run.

    Raises:
        OutputPathError: Naming the file, the operating system's reason and what to do.
    """
    try:
        write()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputPathError(
            f"cannot write {target} ({reason}); nothing was recorded for this volume: free space or fix "
            "the permissions of --out, then run the same command again to go on"
        ) from None


def _relative(path: Path, root: str | os.PathLike[str]) -> str:
    """``path`` relative to the data root: as written first (a collection behind a symlink in the
    root keeps its root-relative path), then after symlinks; else the path itself."""
    for resolve in (os.path.abspath, os.path.realpath):
        try:
            return Path(resolve(path)).relative_to(resolve(root)).as_posix()
        except ValueError:
            continue
    return Path(path).as_posix()


def extract_shard(
    jobs: Iterable[dict[str, Any]], *, data_root: str, out_dir: str, image_size: int, seed: int,
    full_resolution: bool = False, extra_roots: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Extract a shard of volumes; return the record paths and how many volumes were decoded."""
    records: list[str] = []
    decoded = 0
    resolver = VolumeResolver(data_root, extra_roots=tuple(extra_roots))
    for job in jobs:
        record_path, worked = extract_volume(
            job, data_root=data_root, out_dir=out_dir, image_size=image_size, seed=seed, resolver=resolver,
            full_resolution=full_resolution,
        )
        records.append(str(record_path))
        decoded += int(worked)
    return {"records": records, "decoded": decoded}


#: Decode seconds of one full-resolution 2457 x 1890 JPEG 2000 frame on one core
#: (docs/scaling.md), used to estimate a plan's work before choosing where to run it.
FULL_FRAME_SECONDS = 0.2
#: Header, path resolution and record per volume.
VOLUME_SECONDS = 0.01
#: Frames per volume when a rule needs the count and no header was read (BCS-DBT's mean).
TYPICAL_FRAMES = 70
#: Plans estimated below this many seconds of work run in the flow's process: starting a
#: process pool (every worker imports Prefect and the tasks, 3-10 s) would cost more.
SERIAL_BELOW_SECONDS = 10.0


def estimated_frames(job: dict[str, Any], n_frames: int = TYPICAL_FRAMES) -> int:
    """Frames a plan row will decode, from its rule (``n_frames`` for rules that need it)."""
    name, _, argument = str(job["frames_rule"]).partition(":")
    if name == "all":
        return n_frames
    if name == "middle":
        return 1
    if name == "frames":
        return max(1, argument.count(",") + 1)
    if name == "lesion":
        window, _, centres = argument.partition(":")
        try:
            return min(n_frames, (2 * int(window) + 1) * (centres.count(",") + 1))
        except ValueError:
            return 1
    if name == "fraction":
        try:
            return max(1, round(float(argument) * n_frames))
        except ValueError:
            return 1
    return 1


def estimated_seconds(
    jobs: list[dict[str, Any]], *, data_root: str | os.PathLike[str], image_size: int,
    full_resolution: bool = False, extra_roots: tuple[str, ...] = (),
) -> float:
    """Single-core seconds the plan's extraction will take, from one volume's header.

    Frames per rule (:func:`estimated_frames`) times the decode cost of a frame of the
    sampled volume's size at the level the reader will use; a rough figure, only to decide
    whether worker processes are worth starting.
    """
    from tasks.reader.decode import decode_level
    from pydicom.uid import JPEG2000TransferSyntaxes

    resolver = VolumeResolver(data_root, extra_roots=tuple(extra_roots))
    info = None
    for job in jobs[:5]:
        path, _ = resolver.resolve(job.get("descriptive_path"), job.get("classic_path"),
                                   str(job["patient_id"]), study_uid=str(job["study_uid"]))
        if path is None:
            continue
        try:
            info = read_info(path)
            break
        except (ValueError, NotImplementedError, OSError):
            continue
    if info is None:
        return len(jobs) * VOLUME_SECONDS  # nothing readable: rejects cost next to nothing
    level = 0
    if not full_resolution and info.transfer_syntax in JPEG2000TransferSyntaxes and info.modality == "MG":
        level = decode_level(info.rows, info.columns, 5, image_size)
    per_frame = FULL_FRAME_SECONDS * info.rows * info.columns / (2457 * 1890) / 4**level
    frames = sum(estimated_frames(job, info.n_frames) for job in jobs)
    return frames * per_frame + len(jobs) * VOLUME_SECONDS


def balanced_shards(jobs: list[dict[str, Any]], shard_size: int) -> list[list[dict[str, Any]]]:
    """Split the plan into ``ceil(len / shard_size)`` shards of about equal frame counts.

    A positive all-slices volume decodes 70 frames, a normal one 10: cut in patient order,
    one shard can hold several times the work of another and a worker idles at the end.
    Volumes are dealt heaviest first to the lightest shard (longest-processing-time
    rule); each shard keeps patient order inside, and shards come heaviest first, which is
    the order a pool runs them in. Deterministic for a given plan.
    """
    import heapq

    if not jobs:
        return []
    n_shards = -(-len(jobs) // max(1, int(shard_size)))
    ordered = sorted(jobs, key=lambda j: (str(j["patient_id"]), str(j["study_uid"]), str(j["view"])))
    weights = [estimated_frames(j) + 1 for j in ordered]  # +1: the header and record
    heap = [(0, i) for i in range(n_shards)]
    members: list[list[int]] = [[] for _ in range(n_shards)]
    for position in sorted(range(len(ordered)), key=lambda p: (-weights[p], p)):
        load, shard = heapq.heappop(heap)
        members[shard].append(position)
        heapq.heappush(heap, (load + weights[position], shard))
    loads = [sum(weights[p] for p in m) for m in members]
    order = sorted(range(n_shards), key=lambda k: (-loads[k], k))
    return [[ordered[p] for p in sorted(members[k])] for k in order if members[k]]


def shard_jobs(jobs: list[dict[str, Any]], shard_size: int) -> list[list[dict[str, Any]]]:
    """Split the plan into shards in a stable order (patients together)."""
    ordered = sorted(jobs, key=lambda j: (str(j["patient_id"]), str(j["study_uid"]), str(j["view"])))
    return [ordered[i:i + shard_size] for i in range(0, len(ordered), shard_size)]
