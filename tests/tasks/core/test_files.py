"""Atomic writes: complete files only, ordinary permissions, no temporary left behind."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from tasks.core.files import atomic_write_bytes, atomic_write_png, file_fingerprint, remove_stale_temporaries


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
    from tasks.core.files import atomic_write_parquet

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


# --- output folders: writable before any work, one writer at a time ----------------------

def test_output_that_is_a_file_or_under_a_file_fails_naming_path_and_reason(tmp_path) -> None:
    from tasks.core.files import OutputPathError, ensure_writable_dir

    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    with pytest.raises(OutputPathError, match=r"plain\.txt is a file"):
        ensure_writable_dir(a_file)
    with pytest.raises(OutputPathError, match=r"out lies under .*plain\.txt, which is a file"):
        ensure_writable_dir(a_file / "sub" / "out")
    with pytest.raises(OutputPathError, match=r"tomoflow-out cannot be written \(.+\)"):
        ensure_writable_dir("/proc/self/tomoflow-out")
    made = ensure_writable_dir(tmp_path / "new" / "out")
    assert made.is_dir() and list(made.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_read_only_output_fails(tmp_path) -> None:
    from tasks.core.files import OutputPathError, ensure_writable_dir

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match="Permission denied"):
            ensure_writable_dir(folder)
    finally:
        folder.chmod(0o755)


def test_output_lock_refuses_a_second_process_and_dies_with_its_holder(tmp_path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from tasks.core.files import LOCK_NAME, OutputInUseError, output_lock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom tasks.core.files import output_lock\n"
         "with output_lock(sys.argv[1], what='holder run'):\n    print('held', flush=True)\n    time.sleep(600)\n",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputInUseError, match=rf"pid {holder.pid} .*'holder run'"):
            with output_lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    time.sleep(0.1)
    with output_lock(tmp_path, what="next run"):  # no stale lock after SIGKILL
        assert "next run" in (tmp_path / LOCK_NAME).read_text()
        with output_lock(tmp_path):  # re-entrant within one process (CLI, then the flow)
            pass


def test_png_bytes_are_pillows_default_encoding_for_gray_and_rgb(tmp_path) -> None:
    """The one PNG encoder gives the bytes the three it replaced gave (Pillow's default zlib level is 6), and
    the file atomic_write_png writes."""
    import io

    from PIL import Image

    from tasks.core.files import png_bytes

    gray = np.random.default_rng(0).integers(0, 256, (32, 24), dtype=np.uint8)
    rgb = np.random.default_rng(1).integers(0, 256, (16, 12, 3), dtype=np.uint8)
    for image in (gray, rgb):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        assert png_bytes(image) == buffer.getvalue()
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(image)))), image)
    assert atomic_write_png(tmp_path / "g.png", gray).read_bytes() == png_bytes(gray)
    assert png_bytes(gray, compress_level=0) != png_bytes(gray)
    with pytest.raises(ValueError, match="H x W x 3"):
        png_bytes(np.zeros((4, 4, 4), np.uint8))


def test_stale_temporaries_removed(tmp_path) -> None:
    (tmp_path / "slices" / "p").mkdir(parents=True)
    stale = tmp_path / "slices" / "p" / ".0001.png.abc123.tmp"
    stale.write_bytes(b"partial")
    keep = tmp_path / "slices" / "p" / "0001.png"
    keep.write_bytes(b"png")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and keep.exists()
