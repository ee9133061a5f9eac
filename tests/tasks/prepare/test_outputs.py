"""The prepare step's tables assembled once (tasks/prepare/outputs.py): rejects and summary merges."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tasks.core.config import PrepareConfig
from tasks.core.schema import REJECT_COLUMNS
from tasks.prepare.outputs import merge_rejects, merge_summary


def _reject(kind: str, pid: str, reason: str) -> dict[str, str]:
    return {"kind": kind, "patient_id": pid, "study_uid": "1.2", "view": "lcc", "reason": reason}


def test_merge_rejects_keeps_parts_in_order_and_the_schema(tmp_path: Path) -> None:
    part = tmp_path / "cohort_rejects.parquet"
    pd.DataFrame([_reject("label", "P1", "no-label")]).to_parquet(part)
    summary_part = tmp_path / "cohort_summary.part.json"
    summary_part.write_text("{}")
    later = pd.DataFrame([_reject("volume", "P2", "unreadable: x")])
    merged = merge_rejects([str(summary_part), str(part)], pd.DataFrame(), later)
    assert list(merged["patient_id"]) == ["P1", "P2"]  # earlier parts first, empty frames skipped
    assert list(merged.columns) == list(REJECT_COLUMNS)
    empty = merge_rejects([], pd.DataFrame())
    assert len(empty) == 0 and list(empty.columns) == list(REJECT_COLUMNS)


def test_merge_summary_puts_parts_then_settings_then_fields(tmp_path: Path) -> None:
    part = tmp_path / "cohort_summary.part.json"
    part.write_text(json.dumps({"volumes": {"normal": 3}, "strategy": "stale"}))
    cfg = PrepareConfig.model_validate({"slices": {"strategy": "single-slice", "image_size": 96, "seed": 7}})
    summary = merge_summary([str(part), str(tmp_path / "rejects.parquet")], cfg, images=0, failed="too many")
    assert summary["volumes"] == {"normal": 3}
    assert (summary["strategy"], summary["image_size"], summary["seed"]) == ("single-slice", 96, 7)
    assert list(summary)[-2:] == ["images", "failed"]
