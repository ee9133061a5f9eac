"""A collection kept on a mount (a symlink in the data root) is read; CSV paths
that climb out lexically, or point elsewhere, are not; ``extra_roots`` admits a mount's absolute paths."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.prepare.locate import VolumeResolver

REL = "Breast-Cancer-Screening-DBT/DBT-P00001/01-01-2000-DBT-S00001-NA-1/1.000000-NA-111/1-1.dcm"


def _mount_layout(tmp_path: Path) -> tuple[Path, Path]:
    """A data root whose collection folder is a symlink into a 'mount' elsewhere."""
    mount = tmp_path / "mnt" / "dbt"
    volume = mount / REL
    volume.parent.mkdir(parents=True)
    volume.write_bytes(b"DICM")
    root = tmp_path / "data"
    root.mkdir()
    (root / "Breast-Cancer-Screening-DBT").symlink_to(mount / "Breast-Cancer-Screening-DBT")
    return root, mount


def test_collection_behind_a_symlink_in_the_root_is_followed(tmp_path: Path) -> None:
    root, mount = _mount_layout(tmp_path)
    path, how = VolumeResolver(root).resolve(REL, None, "DBT-P00001")
    assert how == "descriptive", how
    assert path is not None and os.path.realpath(path) == os.path.realpath(mount / REL)


def test_dotdot_and_absolute_paths_elsewhere_are_refused_with_both_ways_out(tmp_path: Path) -> None:
    root, mount = _mount_layout(tmp_path)
    (root / "x.dcm").write_bytes(b"DICM")
    # '..' that would land back inside the root is refused too: a CSV path never needs it.
    for csv_path in ["../mnt/dbt/" + REL, str(mount / REL), "Breast-Cancer-Screening-DBT/../x.dcm"]:
        path, how = VolumeResolver(root).resolve(csv_path, None, "DBT-P99999")
        assert path is None, csv_path
        assert how.startswith("outside-data-root: "), how
        assert str(root) in how and "--extra-data-root DIR" in how and "symlink" in how
        assert "max-reject-fraction" not in how


def test_extra_root_admits_absolute_paths_into_a_mount(tmp_path: Path) -> None:
    root, mount = _mount_layout(tmp_path)
    resolver = VolumeResolver(root, extra_roots=(mount,))
    path, how = resolver.resolve(str(mount / REL), None, "DBT-P00001")
    assert (path, how) == (mount / REL, "descriptive")
    # ...but not '..' through it, nor a sibling of the mount.
    sibling = tmp_path / "mnt" / "other.dcm"
    sibling.write_bytes(b"DICM")
    for csv_path in [str(mount) + "/../other.dcm", str(sibling)]:
        assert resolver.resolve(csv_path, None, "DBT-P00001")[0] is None
