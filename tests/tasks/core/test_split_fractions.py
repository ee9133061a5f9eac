"""Tests for tasks.core.split_fractions: the one check of (train, validation, test) shares."""

from __future__ import annotations

import pytest

from tasks.core.config import SlicesConfig
from tasks.core.split_fractions import check_split_fractions


def test_three_shares_summing_to_one_pass_and_a_zero_leaves_a_split_empty() -> None:
    assert check_split_fractions([0.6, 0.2, 0.2]) == (0.6, 0.2, 0.2)
    assert check_split_fractions(("0.5", 0, 0.5)) == (0.5, 0.0, 0.5)


@pytest.mark.parametrize(("value", "message"), [
    ([0.6, 0.2], "three non-negative numbers"),
    ([0.6, -0.2, 0.6], "three non-negative numbers"),
    ([0.6, float("nan"), 0.4], "three non-negative numbers"),
    ([0.6, 0.3, 0.3], "sum to 1.2; they must sum to 1"),
    ("abc", "must be three numbers"),
    (None, "must be three numbers"),
])
def test_wrong_shares_are_refused_naming_the_value(value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_split_fractions(value)


def test_the_configuration_applies_the_same_check() -> None:
    with pytest.raises(ValueError, match="sum to 1.2"):
        SlicesConfig(split_fractions=(0.6, 0.3, 0.3))
    assert SlicesConfig(split_fractions=(0.7, 0.1, 0.2)).split_fractions == (0.7, 0.1, 0.2)
