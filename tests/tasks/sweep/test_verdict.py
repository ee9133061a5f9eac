"""Pooled differences over repeats and the sweep's verdicts: helps/hurts only where defensible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.sweep.verdict import pooled_difference, size_verdicts


def _pred(scores: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(len(labels))], "study_uid": "S", "view": "lcc",
                         "slice_index": 0, "label": labels, "probability": scores})


def test_pooled_difference_sees_a_real_difference_and_no_difference() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 30)
    good = [_pred(labels + rng.normal(0, 0.3, 60), labels) for _ in range(3)]
    noise = [_pred(rng.random(60), labels) for _ in range(3)]
    d = pooled_difference(list(zip(noise, good)), n=300, seed=1)
    assert d["repeats"] == 3 and len(d["per_repeat"]) == 3
    assert d["difference"] == np.mean(d["per_repeat"]) and d["difference"] > 0.3 and d["low"] > 0
    # The same models on both sides: difference 0, interval holding 0.
    same = pooled_difference(list(zip(good, good)), n=100, seed=1)
    assert same["difference"] == 0 and same["low"] <= 0 <= same["high"]
    # Shuffled rows are matched on the image keys, not on their order.
    shuffled = pooled_difference([(noise[0], good[0].sample(frac=1, random_state=3))], n=50, seed=1)
    assert shuffled["per_repeat"][0] == d["per_repeat"][0]
    # Training variance counts: repeats that disagree widen the interval beyond one repeat's.
    mixed = pooled_difference([(noise[0], good[0]), (noise[1], noise[2]), (noise[2], good[2])], n=300, seed=1)
    assert mixed["high"] - mixed["low"] > d["high"] - d["low"]


def _table(capped: bool = False) -> pd.DataFrame:
    rows = []
    for weights, start in (("none", "scratch"), ("/runs/src", "from-src")):
        for repeat in range(2):
            rows.append({"weights": weights, "start": start, "fraction": 0.25, "repeat": repeat, "train_patients": 20,
                         "capped": capped and start == "scratch", "roc_auc": 0.5})
    return pd.DataFrame(rows)


def _diff(low: float, high: float) -> list[dict]:
    return [{"fraction": 0.25, "weights": "/runs/src", "reference": "none", "roc_auc_difference": (low + high) / 2,
             "low": low, "high": high, "repeats": 2}]


def _versus(pre: float, base: float) -> dict:
    return {("/runs/src", 0.25): {"low": pre}, ("none", 0.25): {"low": base}}


def test_verdicts_say_helps_hurts_or_no_answer_with_reasons() -> None:
    [v] = size_verdicts(_table(), _diff(0.05, 0.3), _versus(0.02, -0.1))
    assert v["verdict"] == "helps" and not v["reasons"] and v["sentence"].startswith("Pre-training helps: from-src")
    assert "/runs" not in v["sentence"] and "20 training patients" in v["sentence"]
    [v] = size_verdicts(_table(), _diff(-0.3, -0.05), _versus(-0.2, 0.01))
    assert v["verdict"] == "hurts"
    # Above 0, but the pre-trained arm does not beat the brightness score: no answer.
    [v] = size_verdicts(_table(), _diff(0.05, 0.3), _versus(-0.01, -0.2))
    assert v["verdict"] == "no answer" and v["reasons"] == ["neither arm beats the brightness score (trivial floor)"]
    [v] = size_verdicts(_table(), _diff(0.05, 0.3), _versus(-0.01, 0.02))
    assert v["verdict"] == "no answer" and "from-src does not beat the brightness score" in v["reasons"][0]
    [v] = size_verdicts(_table(), _diff(-0.1, 0.3), _versus(0.02, 0.02))
    assert v["verdict"] == "no answer" and "includes 0" in v["reasons"][0]
    # A capped arm is under-trained: no answer even where the figures would say helps.
    [v] = size_verdicts(_table(capped=True), _diff(0.05, 0.3), _versus(0.02, -0.1))
    assert v["verdict"] == "no answer" and "under-trained: scratch" in v["reasons"][0]
    assert v["sentence"].startswith("No answer for from-src against scratch")


def test_a_verdict_reads_the_fine_tuned_arm_beside_its_zero_shot_start() -> None:
    table = _table()
    table["roc_auc"] = [0.55, 0.57, 0.97, 0.95]  # scratch r0, r1; from-src r0, r1
    zero = pd.DataFrame([{"weights": "/runs/src", "start": "from-src", "fraction": 0.0, "repeat": 0,
                          "train_patients": 0, "capped": False, "roc_auc": 0.99}])
    [v] = size_verdicts(pd.concat([zero, table], ignore_index=True), _diff(0.3, 0.5), _versus(0.2, -0.1))
    assert v["verdict"] == "helps" and v["zero_shot_roc_auc"] == 0.99 and v["fine_tuned_roc_auc"] == pytest.approx(0.96)
    assert "alone scored AUC 0.990" in v["sentence"] and "did not raise it above its start" in v["sentence"]
    # Fine-tuning that does move the start says by how much; no zero-shot row, no such sentence.
    zero["roc_auc"] = 0.90
    [v] = size_verdicts(pd.concat([zero, table], ignore_index=True), _diff(0.3, 0.5), _versus(0.2, -0.1))
    assert "raised it by +0.060" in v["sentence"]
    [v] = size_verdicts(table, _diff(0.3, 0.5), _versus(0.2, -0.1))
    assert v["zero_shot_roc_auc"] is None and "alone scored" not in v["sentence"]
