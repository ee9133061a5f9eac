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


def remove_stale_temporaries(out_dir: str | os.PathLike[str]) -> int:
    """Delete temporary files a killed run left behind (:func:`atomic_write`'s ``.NAME.*.tmp``); how many."""
    removed = 0
    root = Path(out_dir)
    if not root.exists():
        return 0
    for tmp in root.rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


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
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D uint8 image, got {image.dtype} {image.shape}")
    return atomic_write_bytes(path, png_bytes(image, compress_level=compress_level))


def png_bytes(image: np.ndarray, *, compress_level: int = 6) -> bytes:
    """The bytes of a PNG: the one PNG encoder (Pillow's), for prepared slices, augmented copies and pages.

    Args:
        image: ``uint8``, 2-D (8-bit grayscale) or ``H x W x 3`` (RGB).
        compress_level: zlib level 0-9 (6: zlib's and Pillow's default).
    """
    import io

    from PIL import Image

    if image.dtype != np.uint8 or not (image.ndim == 2 or image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(f"expected a 2-D or H x W x 3 uint8 image, got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L" if image.ndim == 2 else "RGB").save(buffer, format="PNG",
                                                                      compress_level=compress_level)
    return buffer.getvalue()


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


class OutputPathError(ValueError):
    """An output folder that cannot be created or written (not worth retrying)."""


def ensure_writable_dir(path: str | os.PathLike[str], *, what: str = "output folder") -> Path:
    """Create ``path`` if needed and prove a file can be written in it, before any work.

    Raises:
        OutputPathError: ``path`` is a file, lies under a file, or cannot be created or
            written (the message names the path and the operating system's reason).
    """
    target = Path(path)
    for parent in [target, *target.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == target else f"lies under {parent}, which is a file"
            raise OutputPathError(f"{what} {target} {where}; choose a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tomoflow-write-test.", suffix=".tmp", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputPathError(
            f"{what} {target} cannot be written ({reason}); choose a folder you can write to"
        ) from None
    return target


class OutputInUseError(RuntimeError):
    """Another run holds the output folder's lock."""


LOCK_NAME = ".tomoflow.lock"
_HELD: dict[str, int] = {}  # lock files this process holds -> nesting depth
_KILLED: dict[str, str] = {}  # lock files this process took over from a killed holder -> that holder


def killed_holder(folder: str | os.PathLike[str]) -> str | None:
    """The holder this process found in ``folder``'s lock when it took it, if that holder never let go.

    A run that ends, even by an error or SIGTERM, empties its lock file; one killed outright
    (SIGKILL, out of memory) leaves its description there. None when the last holder ended.
    """
    return _KILLED.get(str(Path(os.path.abspath(Path(folder) / LOCK_NAME))))


class output_lock:  # noqa: N801 - used as a context manager, like open()
    """One writer per output folder: an exclusive ``fcntl.flock`` on ``DIR/.tomoflow.lock``.

    The operating system drops the lock when the holder's file is closed, including when
    the process is killed (SIGKILL), so a killed run never leaves a stale lock. The file
    holds a JSON description of the holder (pid, host, command, what it runs, start time)
    that the refused run quotes. The descriptor is not inherited across ``exec``, so
    workers and servers a run starts do not keep the lock alive after it.

    Args:
        folder: The output folder.
        what: What the holder is doing (e.g. the flow run's name), for the message.
    """

    def __init__(self, folder: str | os.PathLike[str], *, what: str = "") -> None:
        self.path = Path(folder) / LOCK_NAME
        self.what = what
        self._fd: int | None = None
        self._key = str(Path(os.path.abspath(self.path)))

    def __enter__(self) -> "output_lock":
        import datetime as dt
        import fcntl
        import socket
        import sys

        if self._key in _HELD:
            # This process holds it already (the CLI takes it before the flow starts, so a
            # second run fails at once; the flow takes it again for deployments).
            _HELD[self._key] += 1
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise OutputInUseError(
                f"output folder {self.path.parent} is in use by another tomoflow run ({holder}); "
                "wait for it to finish, or write to another folder. The lock goes when that process "
                f"ends, even if it is killed; {self.path.name} is only its label"
            ) from None
        if os.fstat(fd).st_size:  # the last holder never emptied it: it was killed
            _KILLED[self._key] = _read_holder(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
                "started": dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info, sort_keys=True) + "\n").encode(), 0)
        self._fd = fd
        _HELD[self._key] = 1
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is None and self._key in _HELD:
            _HELD[self._key] -= 1
            return
        if self._fd is not None:
            _HELD.pop(self._key, None)
            import fcntl

            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> str:
    """The holder's description from the lock file, for the message (best effort)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "details not yet written"
    parts = [f"pid {info.get('pid')} on {info.get('host')}"]
    if info.get("what"):
        parts.append(repr(info["what"]))
    if info.get("command"):
        parts.append(f"command {info['command']!r}")
    if info.get("started"):
        parts.append(f"started {info['started']}")
    return ", ".join(parts)
