"""How the report writes numbers: metric names, units, percentages and intervals (Wilson at the edges).

Shared by :mod:`tasks.evaluate.report_sections` (one function per section), :mod:`tasks.evaluate.report`
and :mod:`tasks.evaluate.report_data`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: Plain names and one-line definitions of the metrics.
METRIC_NAMES: dict[str, tuple[str, str]] = {
    "accuracy": ("Accuracy", "share of cases classified correctly"),
    "sensitivity": ("Sensitivity", "share of tumour cases called tumour (recall, true-positive rate)"),
    "specificity": ("Specificity", "share of normal cases called normal (true-negative rate)"),
    "roc_auc": ("ROC AUC", "chance that a random tumour case scores higher than a random normal one (0.5 = coin toss)"),
    "ppv": ("PPV", "share of cases called tumour that have one (precision)"),
    "npv": ("NPV", "share of cases called normal that are normal"),
    "f1": ("F1", "harmonic mean of PPV and sensitivity"),
    "brier": ("Brier score", "mean squared error of the probability (0 = perfect, lower is better)"),
}

_PERCENT = {"accuracy", "sensitivity", "specificity", "ppv", "npv"}


LEVEL_TEXT = {
    "slice": "one 2-D slice (image)",
    "volume": "one DBT view (patient, study and view)",
    "patient": "one patient (all of the patient's views)",
}


KIND_TEXT = {
    "TP": "True positive: tumour slice called tumour",
    "FP": "False positive: normal slice called tumour",
    "FN": "False negative: tumour slice called normal",
}

#: What one case of each level is called in running text.
UNIT = {"slice": "image", "volume": "view", "patient": "patient"}


def fmt(metric: str, value: float | None) -> str:
    """A metric's value as shown: percent for the rates, three decimals otherwise, ``n/a`` if missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if metric in _PERCENT:
        return f"{100 * value:.1f}%"
    return f"{value:.3f}"


def fmt_ci(metric: str, interval: Sequence[float] | None) -> str:
    """A confidence interval as ``"low–high"`` (in the metric's unit), or ``""``."""
    if not interval:
        return ""
    low, high = interval
    if metric in _PERCENT:
        return f"{100 * low:.1f}–{100 * high:.1f}%"
    return f"{low:.3f}–{high:.3f}"

#: The counts behind each proportion: (successes, trials) from the confusion matrix.
_PROPORTION_COUNTS = {
    "accuracy": (("tp", "tn"), ("tp", "tn", "fp", "fn")),
    "sensitivity": (("tp",), ("tp", "fn")),
    "specificity": (("tn",), ("tn", "fp")),
    "ppv": (("tp",), ("tp", "fp")),
    "npv": (("tn",), ("tn", "fn")),
}


def wilson_interval(successes: int, trials: int, ci: float = 0.95) -> list[float] | None:
    """Wilson score interval of a proportion (scipy's ``binomtest``), ``None`` without trials.

    At 0% and 100% a percentile bootstrap collapses to a point (every resample of 9/9 is
    9/9); Wilson's interval does not: 9/9 gives about 70-100%.
    """
    if trials <= 0:
        return None
    from scipy.stats import binomtest

    low_high = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=ci, method="wilson")
    return [float(low_high.low), float(low_high.high)]


def interval_of(entry: Mapping[str, Any], metric: str, ci: float = 0.95) -> tuple[list[float] | None, bool]:
    """The interval shown for a metric: the bootstrap's, or Wilson's for a proportion at an edge.

    A proportion at 0 or 1, or whose bootstrap interval has no width, gets the Wilson score
    interval of its counts (cases taken as independent). Returns ``(interval, is_wilson)``.
    """
    boot = (entry.get("intervals") or {}).get(metric)
    value = (entry.get("metrics") or {}).get(metric)
    if metric not in _PROPORTION_COUNTS or value is None or not boot:  # no bootstrap run: no interval at all
        return boot, False
    if not (value in (0.0, 1.0) or (boot and boot[0] == boot[1])):
        return boot, False
    c = entry.get("confusion") or {}
    num, den = _PROPORTION_COUNTS[metric]
    wilson = wilson_interval(sum(int(c.get(k, 0)) for k in num), sum(int(c.get(k, 0)) for k in den), ci)
    return (wilson, True) if wilson else (boot, False)


def ci_label(metrics: Mapping[str, Any]) -> str:
    return f"{round(100 * float(metrics.get('ci', 0.95)))}% CI"


def n_resamples(metrics: Mapping[str, Any]) -> int:
    return int((metrics.get("bootstrap") or {}).get("n_resamples", 0))


def level_entry(metrics: Mapping[str, Any], level: str) -> Mapping[str, Any]:
    return (metrics.get("levels") or {}).get(level) or {}
