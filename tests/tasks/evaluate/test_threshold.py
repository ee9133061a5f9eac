"""The operating threshold chosen on validation volumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.evaluate.threshold import THRESHOLD_NAME, choose_threshold, operating_threshold, recorded_threshold


def test_sensitivity_rule_keeps_the_target_with_the_highest_threshold() -> None:
    labels = [1] * 10 + [0] * 10
    scores = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.2] + list(np.linspace(0.0, 0.62, 10))
    choice = choose_threshold(labels, scores, rule="sensitivity", target=0.9)
    assert choice["threshold"] == pytest.approx(0.55)  # 9 of 10 positives at or above it
    assert choice["sensitivity"] == pytest.approx(0.9)
    assert choice["specificity"] == pytest.approx(np.mean(np.linspace(0.0, 0.62, 10) < 0.55))
    higher = choose_threshold(labels, scores, rule="sensitivity", target=1.0)
    assert higher["threshold"] == pytest.approx(0.2) and higher["sensitivity"] == 1.0


def test_youden_rule_maximises_sensitivity_plus_specificity() -> None:
    labels = [0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.6, 0.5, 0.7, 0.9]
    choice = choose_threshold(labels, scores, rule="youden")
    j = choice["sensitivity"] + choice["specificity"] - 1
    for t in scores:
        p, y = np.asarray(scores), np.asarray(labels)
        assert j >= (p[y == 1] >= t).mean() + (p[y == 0] < t).mean() - 1 - 1e-12


def test_one_class_gives_no_threshold_and_the_default_says_why(tmp_path: Path) -> None:
    choice = choose_threshold([1, 1], [0.4, 0.6])
    assert choice["threshold"] is None and "lack a class" in choice["reason"]
    value, source = operating_threshold(choice, None)
    assert value == 0.5 and "lack a class" in source
    value, source = operating_threshold({"threshold": 0.3, "rule": "youden", "target": None}, 0.7)
    assert value == 0.7 and "--threshold" in source and "overrides" in source
    assert recorded_threshold(tmp_path)[0] == 0.5 and "no threshold recorded" in recorded_threshold(tmp_path)[1]
    (tmp_path / THRESHOLD_NAME).write_text(json.dumps({"threshold": 0.42, "source": "chosen on validation"}))
    assert recorded_threshold(tmp_path) == (0.42, "chosen on validation")
    with pytest.raises(ValueError, match="rule"):
        choose_threshold([0, 1], [0.1, 0.9], rule="f1")
