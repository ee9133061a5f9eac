"""The report's lead section: whole volumes beside the study's single-slice figure."""

from __future__ import annotations

from tasks.evaluate.report_whole_volume import deployment_section


def _level(auc: float, sens: float) -> dict:
    return {"metrics": {"roc_auc": auc, "sensitivity": sens, "specificity": 0.7, "accuracy": 0.8},
            "intervals": {"roc_auc": [auc - 0.1, min(1.0, auc + 0.05)]}}


def test_section_sets_whole_volume_beside_the_single_slice_figure_with_floors_and_offsets() -> None:
    whole = {**_level(0.81, 0.9), "n": 30, "n_positive": 9, "n_negative": 21, "frames_scored": 360, "topk": 3,
             "frame_stride": 2, "null_roc_auc": 0.55, "null_roc_auc_range": [0.4, 0.7],
             "topk_mean": _level(0.84, 0.8), "trivial": {"score": "percentile_99", **_level(0.66, 0.5)},
             "top_frame_vs_box": {"n": 3, "offsets": [-2, 0, 7], "median_abs": 2.0, "within_5": 2 / 3},
             "volumes_not_scored": {"not scored": 1}, "null_warning": None}
    metrics = {"threshold": 0.42, "threshold_source": "chosen on the validation volumes",
               "levels": {"slice": _level(0.93, 0.95), "volume": _level(0.92, 0.94), "whole_volume": whole}}
    section = deployment_section(metrics)
    assert section["available"] and section["threshold"] == "0.420" and "validation" in section["source"]
    auc_row = section["rows"][0]
    assert auc_row[0] == "ROC AUC" and auc_row[1].startswith("0.810") and auc_row[2].startswith("0.840")
    assert auc_row[3].startswith("0.930") and auc_row[4].startswith("0.920")
    assert any("random frame scores" in f and "0.550" in f for f in section["floors"])
    assert any("percentile_99" in f for f in section["floors"])
    assert "median 2 frames" in section["where"] and "-2, 0, 7" in section["where"] and section["not_scored"] == 1


def test_no_whole_volume_level_no_section_and_a_failed_one_says_why() -> None:
    assert deployment_section({"levels": {"slice": _level(0.9, 0.9)}}) is None
    failed = deployment_section({"threshold": 0.5, "threshold_source": "x",
                                 "levels": {"whole_volume": {"n": 0, "note": "no volume could be read"}}})
    assert failed["available"] is False and "could be read" in failed["note"]
