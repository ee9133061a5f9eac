"""The per-volume score cache: content hash, checkpoint hash and settings."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from tasks.score.volumes import score_list


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 1), torch.nn.Flatten(0))


def test_cache_reuses_unchanged_volumes_and_rescores_changed_ones(make_dbt, phantom, tmp_path: Path) -> None:
    a, _ = make_dbt("a.dcm")
    b, _ = make_dbt("b.dcm", view="lcc")
    volumes = pd.DataFrame({"patient_id": ["P1", "P2"], "study_uid": ["S1", "S2"], "view": ["rcc", "lcc"],
                            "path": [str(a), str(b)], "listed_by": "header", "status": [None, None]})
    cache = tmp_path / "cache"
    kwargs = dict(png_size=24, input_size=16, stride=1, cache_dir=cache, workers=0)
    frames1, status1 = score_list(volumes, model=_model(0), checkpoint_sha="ck1", **kwargs)
    assert status1["status"].tolist() == ["scored", "scored"] and not status1["reused"].any()
    frames2, status2 = score_list(volumes, model=_model(1), checkpoint_sha="ck1", **kwargs)
    assert status2["reused"].all()
    pd.testing.assert_frame_equal(frames1, frames2)  # reused: the other model's weights never ran
    # New content under the same name is scored again; so is every volume under another checkpoint.
    make_dbt("b.dcm", phantom(side="L") // 2, view="lcc")
    _, status3 = score_list(volumes, model=_model(0), checkpoint_sha="ck1", **kwargs)
    assert status3["reused"].tolist() == [True, False]
    _, status4 = score_list(volumes, model=_model(0), checkpoint_sha="ck2", **kwargs)
    assert not status4["reused"].any()
    _, status5 = score_list(volumes, model=_model(0), checkpoint_sha="ck1", **{**kwargs, "stride": 2})
    assert not status5["reused"].any()


def test_unreadable_volume_gets_its_status_and_the_rest_are_scored(make_dbt, tmp_path: Path) -> None:
    a, _ = make_dbt("a.dcm")
    data = a.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - len(data) // 3])
    volumes = pd.DataFrame({"patient_id": ["P1", "P2", "P3"], "study_uid": ["S1", "S2", "S3"],
                            "view": ["rcc"] * 3, "path": [str(cut), str(a), None], "listed_by": "header",
                            "status": [None, None, "missing: not found"]})
    frames, status = score_list(volumes, model=_model(0), checkpoint_sha="ck", png_size=24, input_size=16,
                                stride=1, cache_dir=tmp_path / "cache", workers=0)
    assert status["status"].iloc[0].startswith("unreadable") and status["status"].iloc[1] == "scored"
    assert status["status"].iloc[2] == "missing: not found" and set(frames["volume"]) == {1}
