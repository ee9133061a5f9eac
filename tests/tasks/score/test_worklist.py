"""score's volume and study rows and its summary."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.score.worklist import VOLUME_COLUMNS, WORKLIST_COLUMNS, frame_rows, study_rows, summary, volume_rows


@pytest.fixture
def listed() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    volumes = pd.DataFrame({"patient_id": ["A", "A", "B", "C"], "study_uid": ["s1", "s1", "s2", "s3"],
                            "view": ["lcc", "rcc", "lcc", "rmlo"], "path": ["a", "b", "c", None],
                            "listed_by": ["header"] * 4, "status": [None, None, None, "missing: x"]})
    frames = pd.DataFrame({"volume": [0, 0, 0, 1, 1, 2, 2],
                           "frame": [0, 1, 2, 0, 1, 0, 3],
                           "probability": [0.1, 0.9, 0.5, 0.2, 0.3, 0.6, 0.7]})
    status = pd.DataFrame({"status": ["scored", "scored", "scored", "missing: x"], "n_frames": [3, 2, 4, None],
                           "reused": [True, False, False, False], "source_sha256": ["1", "2", "3", None]})
    return volumes, frames, status


def test_volume_rows_max_topk_top_frame_and_flag(listed) -> None:
    volumes, frames, status = listed
    rows = volume_rows(volumes, frames, status, threshold=0.65, topk=2)
    assert tuple(rows.columns) == VOLUME_COLUMNS
    assert rows["score_max"].tolist()[:3] == [0.9, 0.3, 0.7] and pd.isna(rows["score_max"].iloc[3])
    assert rows["score_topk"].tolist()[:3] == pytest.approx([0.7, 0.25, 0.65])
    assert rows["top_frame"].tolist()[:3] == [1, 1, 3]
    assert rows["flagged"].tolist()[:3] == [True, False, True] and pd.isna(rows["flagged"].iloc[3])
    assert rows["status"].tolist()[3] == "missing: x" and rows["frames_scored"].tolist() == [3, 2, 2, 0]


def test_study_rows_take_the_highest_volume_and_sort_descending(listed) -> None:
    volumes, frames, status = listed
    studies = study_rows(volume_rows(volumes, frames, status, threshold=0.65, topk=2))
    assert tuple(studies.columns) == WORKLIST_COLUMNS
    assert studies["patient_id"].tolist() == ["A", "B", "C"]
    first = studies.iloc[0]
    assert first["score_max"] == 0.9 and first["top_view"] == "lcc" and first["top_frame"] == 1 and first["views"] == "lcc,rcc"
    assert studies.iloc[2]["status"].startswith("not scored") and pd.isna(studies.iloc[2]["score_max"])


def test_summary_counts_and_frame_rows(listed) -> None:
    volumes, frames, status = listed
    rows = volume_rows(volumes, frames, status, threshold=0.65)
    facts = summary(rows, {"run": "r", "checkpoint": "c", "checkpoint_sha256": "h", "threshold": 0.65,
                           "threshold_source": "chosen", "png_size": 48, "input_size": 32},
                    source="header", stride=1, topk=3, seconds=1.0)
    assert (facts["listed"], facts["scored"], facts["reused"], facts["failed"]) == (4, 3, 1, 1)
    assert facts["failed_by_reason"] == {"missing": 1} and facts["flagged"] == 2 and facts["studies"] == 3
    out = frame_rows(volumes, frames)
    assert out.columns.tolist() == ["patient_id", "study_uid", "view", "frame", "probability"]
    assert out["view"].tolist() == ["lcc"] * 3 + ["rcc"] * 2 + ["lcc"] * 2
