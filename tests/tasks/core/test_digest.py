"""SHA-256 of files and bytes (tasks/core/digest.py), the digest every record compares with."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tasks.core.digest import sha256_bytes, sha256_file


def test_file_and_bytes_digests_agree_and_tell_contents_apart(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # over one read chunk
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == sha256_bytes(data) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1] + b"\x00")
    assert sha256_file(str(path)) != sha256_bytes(data)
