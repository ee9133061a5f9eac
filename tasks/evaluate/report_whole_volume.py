"""The report's lead section: what a deployment would see (whole volumes), beside the study's single-slice figure.

Plain data for ``report.html.j2`` (it escapes everything): a table of the whole-volume figures
(max and top-k mean of every frame's probability) beside the study's per-image and per-volume
figures of the manifest's slices, the floors (random scores combined the same way, the
trivial brightness score maximised over the same frames), the threshold and where it came
from, and where the top frame fell relative to the boxed slice of positive volumes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.evaluate.report_format import fmt, fmt_ci

_MEASURES = (("roc_auc", "ROC AUC"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
             ("accuracy", "Accuracy"))


def _cell(block: Mapping[str, Any] | None, metric: str) -> str:
    if not block:
        return "n/a"
    value = (block.get("metrics") or {}).get(metric)
    if value is None:
        return "n/a"
    interval = fmt_ci(metric, (block.get("intervals") or {}).get(metric))
    return f"{fmt(metric, value)} ({interval})" if interval else fmt(metric, value)


def deployment_section(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """The section's data, or None when the evaluation has no whole-volume level (an external one)."""
    levels = metrics.get("levels") or {}
    whole = levels.get("whole_volume")
    if whole is None:
        return None
    threshold = f"{float(metrics.get('threshold', 0.5)):.3f}"
    source = str(metrics.get("threshold_source") or "")
    if not whole.get("n"):
        return {"available": False, "note": whole.get("note") or "no volume could be scored", "threshold": threshold,
                "source": source}
    header = ["Measure", f"Whole volume: max of {whole['frames_scored']} frames",
              f"Whole volume: mean of top {whole['topk']}", "Study's method: per image", "Study's method: per volume"]
    rows = [[name, _cell(whole, m), _cell(whole.get("topk_mean"), m), _cell(levels.get("slice"), m),
             _cell(levels.get("volume"), m)] for m, name in _MEASURES]
    null = whole.get("null_roc_auc")
    trivial = whole.get("trivial") or {}
    floors = []
    if null is not None:
        low, high = whole.get("null_roc_auc_range") or (None, None)
        floors.append(f"random frame scores combined by the max reach ROC AUC {null:.3f}"
                      + (f" (95% of draws {low:.3f}-{high:.3f})" if low is not None else ""))
    if trivial.get("metrics", {}).get("roc_auc") is not None:
        floors.append(f"the trivial brightness score {trivial['score']}, maximised over the same frames, reaches "
                      f"ROC AUC {_cell(trivial, 'roc_auc')}")
    offsets = whole.get("top_frame_vs_box") or {}
    where = None
    if offsets.get("n"):
        where = (f"For {offsets['n']} positive volume(s) with a boxed slice, the top frame lay a median "
                 f"{offsets['median_abs']:g} frames from it; {100 * offsets['within_5']:.0f}% within 5 frames "
                 f"(offsets, top minus boxed: {', '.join(str(o) for o in offsets['offsets'][:40])}"
                 f"{' ...' if len(offsets['offsets']) > 40 else ''}).")
    return {"available": True, "header": header, "rows": rows, "threshold": threshold, "source": source,
            "n": whole.get("n"), "n_pos": whole.get("n_positive"), "n_neg": whole.get("n_negative"),
            "stride": whole.get("frame_stride"), "floors": floors, "where": where,
            "not_scored": sum((whole.get("volumes_not_scored") or {}).values()),
            "warning": whole.get("null_warning")}
