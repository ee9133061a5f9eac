"""Content fingerprints of input volumes and of the PNGs made from them.

The extraction cache is keyed on the SHA-256 of each DICOM file's bytes, never on its name,
size or mtime: an in-place edit that keeps size and mtime (``touch -r``) is still noticed.
Hashing a full BCS-DBT volume reads the whole file (about 1.2 GB/s on one core here,
``bench/source_hash.py``), so the hash is remembered in the volume's record together with
the file's ``(size, mtime_ns, ctime_ns, inode, device)``. The change time cannot be set from
user space (``touch -r`` and ``os.utime`` update it), so the same tuple means the same bytes
in practice (git's index makes the same bet); any difference and the file is hashed again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tasks.core.digest import sha256_file


def source_stat(path: str | os.PathLike[str]) -> dict[str, int]:
    """The stat fields that change whenever a file's bytes are rewritten."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "ino": st.st_ino, "dev": st.st_dev}


def source_sha256(path: str | os.PathLike[str], record: dict[str, Any] | None = None) -> tuple[str, dict[str, int]]:
    """``(sha256, stat)`` of a volume file, reusing ``record``'s hash when its stat still matches.

    Args:
        path: The volume file.
        record: An earlier extraction record of this volume (its ``source_sha256`` and
            ``source_stat``), or None.
    """
    stat = source_stat(path)
    if record and record.get("source_stat") == stat and isinstance(record.get("source_sha256"), str):
        return record["source_sha256"], stat
    return sha256_file(path), stat


def png_matches(path: Path, size: object, digest: object) -> bool:
    """Whether a cached PNG still holds the bytes its record names (size first, then hash)."""
    try:
        if not path.is_file() or path.stat().st_size != size:
            return False
        return sha256_file(path) == digest
    except OSError:
        return False
