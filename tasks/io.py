"""Atomic writes and content fingerprints shared by every stage.

Every file tomoflow writes goes to a temporary name beside its target and is then
renamed, so a killed run never leaves a half-written file that a rerun would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; outputs are shared within a lab, so
# they get the permissions an ordinary open() would give them.
_FILE_MODE = 0o666 & ~_current_umask()


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically (stable bytes for equal content)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_png(path: str | os.PathLike[str], image: np.ndarray, *, compress_level: int = 6) -> Path:
    """Write a 2-D uint8 array as an 8-bit grayscale PNG atomically (zlib ``compress_level`` 0-9)."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D uint8 image, got {image.dtype} {image.shape}")
    return atomic_write(path, lambda tmp: Image.fromarray(image, mode="L").save(
        tmp, format="PNG", compress_level=compress_level))


def atomic_write_parquet(path: str | os.PathLike[str], table: Any) -> Path:
    """Write a pandas DataFrame (no index) to Parquet atomically."""
    return atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))


def file_fingerprint(path: str | os.PathLike[str], *, content: bool | None = None) -> str:
    """A short key for a file: SHA-256 of its bytes, or of size + mtime + path for big files.

    Args:
        path: The file.
        content: Hash the bytes (True), only size + mtime + path (False), or decide by size
            (None: bytes up to 64 MiB).
    """
    p = Path(path)
    st = p.stat()
    if content is None:
        content = st.st_size <= 64 * 1024 * 1024
    h = hashlib.sha256()
    if content:
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    else:
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]
