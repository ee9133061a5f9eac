"""SHA-256 of a file's bytes and of bytes in memory: the one home of content hashing.

Volumes (:mod:`tasks.prepare.source_hash`), PNGs, checkpoints (the score and evaluation records,
:mod:`models.weights.transfer`) and weights files (:mod:`models.weights.resolve`,
:mod:`models.weights.fetch`) are all hashed here, so a digest written by one is the digest
another compares it with.
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["sha256_bytes", "sha256_file"]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (``hashlib.file_digest``: read in chunks, never whole into memory)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
