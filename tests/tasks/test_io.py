"""Atomic writes: complete files only, ordinary permissions, no temporary left behind."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from tasks.io import atomic_write_bytes, atomic_write_png, file_fingerprint


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path) -> None:
    target = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_failed_write_keeps_the_old_file(tmp_path) -> None:
    target = tmp_path / "image.png"
    atomic_write_png(target, np.zeros((4, 4), np.uint8))
    before = target.read_bytes()
    with pytest.raises(ValueError, match="image.png"):
        atomic_write_png(target, np.zeros((4, 4), np.float32))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["image.png"]


def test_fingerprint_follows_content(tmp_path) -> None:
    a = tmp_path / "a"
    a.write_bytes(b"x" * 10)
    first = file_fingerprint(a)
    a.write_bytes(b"y" * 10)
    assert file_fingerprint(a) != first
    assert file_fingerprint(a, content=False) != file_fingerprint(a)


def test_write_that_dies_midway_leaves_old_file_and_no_temporary(tmp_path) -> None:
    from tasks.io import atomic_write_parquet

    target = tmp_path / "table.parquet"
    target.write_bytes(b"old")

    class Dies:
        def to_parquet(self, path, index=False) -> None:
            with open(path, "wb") as fh:
                fh.write(b"half a file")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_parquet(target, Dies())
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]
