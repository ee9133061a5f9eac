"""The slow tier's list (tests/conftest.py): a key that matches no collected test stops the run, a test
cannot mark itself slow, and every key of the real list names a test that exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import SLOW_TESTS, pytest_collection_modifyitems, stale_slow_keys

ROOT = Path(__file__).resolve().parents[1]
NODEIDS = ["tests/a/test_x.py::test_one", "tests/a/test_x.py::test_two[1]", "tests/b/test_y.py::test_three"]


def test_stale_slow_keys_names_renamed_files_and_tests_in_the_collected_part_only() -> None:
    keys = ["tests/a/test_x.py",                 # a whole file: matches
            "tests/a/test_x.py::test_two",       # a test name, its parametrised ids match
            "tests/a/test_x.py::test_gone",      # renamed: stale
            "tests/a/test_old_name.py",          # file renamed: stale
            "tests/b/test_y.py::test_thr",       # a prefix of a test name: matches
            "tests/c/test_z.py::test_four"]      # outside what was collected: not judged
    collected = lambda path: path.startswith(("tests/a/", "tests/b/"))  # noqa: E731
    assert stale_slow_keys(keys, NODEIDS, collected) == ["tests/a/test_x.py::test_gone", "tests/a/test_old_name.py"]
    assert stale_slow_keys(keys, NODEIDS, lambda path: False) == []


class _Item:
    def __init__(self, nodeid: str, *marks: str) -> None:
        self.nodeid, self.marks = nodeid, list(marks)

    def get_closest_marker(self, name: str):
        return name if name in self.marks else None

    def add_marker(self, mark: pytest.MarkDecorator) -> None:
        self.marks.append(mark.name)


def _config(*args: str) -> SimpleNamespace:
    return SimpleNamespace(args=list(args), invocation_params=SimpleNamespace(dir=ROOT), rootpath=ROOT,
                           getoption=lambda name, default=None: default)


def _items() -> list[_Item]:
    """One test for each key of the real list, one test of the fast tier."""
    return [_Item(key if "::" in key else f"{key}::test_a") for key in SLOW_TESTS] + [_Item("tests/test_x.py::test_fast")]


def test_the_hook_marks_the_listed_tests_and_stops_on_a_stale_key(monkeypatch: pytest.MonkeyPatch) -> None:
    items = _items()
    pytest_collection_modifyitems(_config("tests"), items)
    assert [item.marks for item in items] == [["slow"]] * len(SLOW_TESTS) + [[]]

    renamed = next(key for key in SLOW_TESTS if "::" in key)
    without = lambda: [item for item in _items() if item.nodeid != renamed]  # noqa: E731
    with pytest.raises(pytest.UsageError, match=re.escape(f"SLOW_TESTS key {renamed!r}") + ".* matches no collected"):
        pytest_collection_modifyitems(_config("tests"), without())
    with pytest.raises(pytest.UsageError, match=re.escape(f"SLOW_TESTS key {renamed!r}")):
        pytest_collection_modifyitems(_config(renamed.split("::")[0]), without())
    # Not judged where the run did not collect the key's file whole: other files, or single tests.
    pytest_collection_modifyitems(_config("tests/test_x.py"), without())
    pytest_collection_modifyitems(_config(f"{renamed.split('::')[0]}::test_other"), without())


def test_a_test_marked_slow_in_its_module_is_refused() -> None:
    items = _items()
    items[-1].marks.append("slow")
    with pytest.raises(pytest.UsageError, match="tests/test_x.py::test_fast is marked slow in its module"):
        pytest_collection_modifyitems(_config("tests"), items)


def test_every_slow_key_names_an_existing_test_file_and_test() -> None:
    """Checked on every run of this file, not only when the whole tree is collected."""
    for key in SLOW_TESTS:
        path, _, name = key.partition("::")
        assert (ROOT / path).is_file(), f"SLOW_TESTS key {key!r}: no such file"
        if name:
            tree = ast.parse((ROOT / path).read_text())
            defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
            assert any(d.startswith(name) for d in defined), f"SLOW_TESTS key {key!r}: no such test"
