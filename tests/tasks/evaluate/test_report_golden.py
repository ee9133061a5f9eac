"""The page itself, pinned: report.html's tags and text on fixed inputs equal the recorded ones.

The recorded pages (``report_golden/*.txt``) were rendered by the string-concatenation
report before it became a jinja2 template; a change to the template or the section code
that alters a tag, an attribute or a word shows up here. Whitespace between tags, the
spelling of character references (``&#x27;`` / ``&#39;``) and the PNG bytes (matplotlib's
version) are left out.
"""

from __future__ import annotations

import copy
import html
import re
from pathlib import Path
from typing import Any

import pytest

from tasks.evaluate.report import write_report
from tasks.evaluate.metrics import evaluate_predictions
from tests.tasks.evaluate.test_report import COHORT_SUMMARY, HISTORY, _examples, _predictions
from tests.tasks.evaluate.test_report_model import SCRATCH

GOLDEN = Path(__file__).with_name("report_golden")


def normalise(page: str) -> str:
    """One tag per line, entities decoded, whitespace runs as one space, images as ``data:...``."""
    page = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:...", page)
    page = re.sub(r"&(#x27|#39|#34|quot);", lambda m: html.unescape(m.group(0)), page)
    page = re.sub(r">\s+<", "><", re.sub(r"\s+", " ", page))
    return re.sub(r"(<[^>]+>)", r"\n\1", page).strip() + "\n"


def _inputs(variant: str) -> dict[str, Any]:
    pred = _predictions()
    if variant == "full":
        examples = [dict(e, map_resolution=(7, 7), layer="features.29") for e in _examples()]
        metrics = evaluate_predictions(pred, bootstrap=50, seed=0)
        metrics["localization"] = {"layer": "features.29", "map_resolution": [7, 7], "note": "maps are coarse <b>",
                                   "hits": 1, "n": 2, "fraction": 0.5, "n_no_signal": 1}
        metrics["occlusion"] = {"mean_drop": 0.2, "mean_probability": 0.7, "mean_probability_hidden": 0.5, "n": 3,
                                "n_called_positive": 2, "flips": 1, "flip_fraction": 0.5}
        history = HISTORY.copy()
        history.loc[2, "val_loss"] = 40.0
        return dict(metrics=metrics, history=history, cohort_summary=COHORT_SUMMARY, config=SCRATCH,
                    predictions=pred, examples=examples[:1], manifest=pred.assign(augmented_from=None),
                    chance={"train": 0.69, "validation": 0.6, "class_balance": "weighted <x>"})
    metrics = evaluate_predictions(pred, bootstrap=0, seed=0)
    metrics["levels"] = copy.deepcopy(metrics["levels"])
    metrics.update(degenerate=True, degenerate_reason="all <same>")
    metrics["levels"]["patient"]["better_than_null"] = False
    return dict(metrics=metrics, history=None, cohort_summary=None, config={"evaluate": {}}, predictions=None,
                examples=[])


@pytest.mark.parametrize("variant", ["full", "empty"])
def test_report_page_equals_the_recorded_one(variant: str, tmp_path: Path) -> None:
    page = write_report(tmp_path / f"run-{variant}", **_inputs(variant)).read_text(encoding="utf-8")
    expected = (GOLDEN / f"{variant}.txt").read_text(encoding="utf-8")
    got = normalise(page)
    if got != expected:  # name the first differing line, not two 500-line strings
        lines = list(zip(got.splitlines(), expected.splitlines()))
        first = next((i for i, (a, b) in enumerate(lines) if a != b), len(lines))
        pytest.fail(f"{variant}: line {first + 1} differs from report_golden/{variant}.txt:\n"
                    f"  got      {got.splitlines()[first] if first < len(got.splitlines()) else '<end>'}\n"
                    f"  recorded {expected.splitlines()[first] if first < len(expected.splitlines()) else '<end>'}")
