"""Pseudonymous ids for pages that leave the hospital's own folders (reports, worklists).

A page that is served or shared (``serve-outputs``, a worklist on a ward screen) must not show
PatientIDs or StudyInstanceUIDs. It shows a short keyed hash instead: the same id gives the
same pseudonym within one output root, so a reader can follow one patient across pages, yet
nobody without the root's salt can test a guessed id against it (a plain hash of an id could
be reversed by hashing the hospital's id list). The salt is 32 random bytes kept in the output
root (:data:`SALT_FILE`, mode 0600), created on first use.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

#: The salt's file name inside an output root.
SALT_FILE = ".pseudonym-salt"
#: Hex characters kept of the keyed hash: 10 (40 bits) keep collisions negligible for a collection.
PSEUDONYM_HEX = 10


def root_salt(root: str | os.PathLike[str]) -> bytes:
    """The salt of the output root ``root``: read from :data:`SALT_FILE`, created there once if absent."""
    path = Path(root) / SALT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            return path.read_bytes()
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(32))
        data = path.read_bytes()
    if len(data) < 16:
        raise ValueError(f"{path} holds {len(data)} bytes, not a salt: remove it and tomoflow writes a new one")
    return data


def pseudonym(value: object, salt: bytes, *, prefix: str = "P-") -> str:
    """``prefix`` + the first :data:`PSEUDONYM_HEX` hex digits of HMAC-SHA256(salt, str(value))."""
    digest = hmac.new(salt, str(value).encode("utf-8"), hashlib.sha256).hexdigest()
    return prefix + digest[:PSEUDONYM_HEX]
