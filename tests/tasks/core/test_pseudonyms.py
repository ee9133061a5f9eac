"""Pseudonymous ids: stable within a root, different across roots, never the id itself."""

from __future__ import annotations

import pytest

from tasks.core.pseudonyms import SALT_FILE, pseudonym, root_salt


def test_same_root_same_pseudonym_other_root_other(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    salt_a, salt_b = root_salt(a), root_salt(b)
    assert root_salt(a) == salt_a  # read back, not re-created
    assert (a / SALT_FILE).stat().st_mode & 0o077 == 0
    p = pseudonym("DBT-P00042", salt_a)
    assert p == pseudonym("DBT-P00042", salt_a)
    assert p != pseudonym("DBT-P00043", salt_a)
    assert p != pseudonym("DBT-P00042", salt_b)
    assert "P00042" not in p and p.startswith("P-") and len(p) == 12


def test_truncated_salt_is_refused_naming_the_file(tmp_path):
    (tmp_path / SALT_FILE).write_bytes(b"x")
    with pytest.raises(ValueError, match=SALT_FILE):
        root_salt(tmp_path)
