"""evaluate's whole-volume level: combined per volume, floors, and where the top frame fell."""

from __future__ import annotations

import numpy as np
import pandas as pd
from tasks.evaluate.whole_volume import manifest_volumes, top_frame_offsets, volume_scores, whole_volume_level


def _frames(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for v in range(16):
        label = int(v % 2)
        for f in range(6):
            p = rng.uniform(0.0, 0.4) + (0.5 if label and f == 3 else 0.0)
            rows.append({"patient_id": f"P{v // 2}", "study_uid": f"S{v}", "view": "lcc", "split": "test",
                         "label": label, "cohort": "cancer" if label else "normal",
                         "box_slice": 3 if label else None, "n_frames": 6, "slice_index": f, "probability": p,
                         "trivial__percentile_99": rng.uniform()})
    return pd.DataFrame(rows)


def test_volume_scores_max_topk_and_top_frame() -> None:
    units = volume_scores(_frames(), topk=2)
    assert len(units) == 16
    positives = units[units["label"] == 1]
    assert (positives["top_frame"] == 3).all() and (positives["max"] >= positives["topk"]).all()


def test_whole_volume_level_has_figures_floors_and_offsets() -> None:
    frames = _frames()
    entry = whole_volume_level(frames, threshold=0.5, threshold_source="chosen", stride=1, topk=2,
                               trivial_score="percentile_99", bootstrap=20, ci=0.95, seed=0, calibration_bins=5,
                               n_listed=16, not_scored={})
    assert entry["n"] == 16 and entry["metrics"]["roc_auc"] == 1.0 and entry["metrics"]["sensitivity"] == 1.0
    # The null: random frame scores combined by the max, not 0.5 by fiat.
    assert 0.2 < entry["null_roc_auc"] < 0.8 and entry["better_than_null"] is True
    assert entry["trivial"]["score"] == "percentile_99" and entry["trivial"]["metrics"]["roc_auc"] < 0.95
    assert entry["top_frame_vs_box"]["n"] == 8 and entry["top_frame_vs_box"]["median_abs"] == 0.0
    assert entry["topk_mean"]["metrics"]["roc_auc"] == 1.0 and entry["frames_scored"] == len(frames)


def test_top_frame_offsets_and_manifest_volumes(tmp_path) -> None:
    units = pd.DataFrame({"label": [1, 1, 0], "box_slice": [10, 4, None], "top_frame": [12, 4, 7]})
    out = top_frame_offsets(units, stride=2)
    assert out["offsets"] == [0, 2] and out["within_stride"] == 0.5 and out["within_5"] == 1.0
    (tmp_path / "a.dcm").write_bytes(b"x")
    manifest = pd.DataFrame({"patient_id": ["P", "P", "Q"], "study_uid": ["S", "S", "T"], "view": ["lcc"] * 3,
                             "slice_index": [1, 2, 0], "label": [1, 1, 0], "split": ["test", "test", "train"],
                             "source_path": ["a.dcm", "a.dcm", "b.dcm"], "box_slice": [2, 2, None],
                             "augmented_from": [None, None, None], "cohort": ["cancer", "cancer", "normal"]})
    vols = manifest_volumes(manifest, tmp_path)
    assert len(vols) == 1 and vols.iloc[0]["path"] == str(tmp_path / "a.dcm") and vols.iloc[0]["box_slice"] == 2
    assert manifest_volumes(manifest, None).iloc[0]["status"].startswith("missing")
