"""Tests for tasks.core.split_leaks: the rule that no patient crosses splits."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.core.split_leaks import SplitLeakError, assert_disjoint


def test_assert_disjoint_names_the_leaked_patients() -> None:
    table = pd.DataFrame({"patient_id": ["P1", "P1", "P2", "P3", "P3"],
                          "split": ["train", "test", "train", "validation", "validation"]})
    with pytest.raises(SplitLeakError) as err:
        assert_disjoint(table)
    assert "P1" in str(err.value) and "P3" not in str(err.value)
    assert isinstance(err.value, ValueError) and isinstance(err.value, AssertionError)
    assert_disjoint(table.iloc[1:])


def test_assert_disjoint_names_a_missing_column() -> None:
    with pytest.raises(ValueError, match=r"lacks columns \['split'\]"):
        assert_disjoint(pd.DataFrame({"patient_id": ["P1"]}))
