"""Metrics: hand-computed cases, undefined metrics, aggregation, patient bootstrap, calibration."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

import tasks.evaluate.metrics as metrics_mod
import tasks.evaluate.metrics_bootstrap as bootstrap_mod
import tasks.evaluate.metrics_chance as chance_mod
from tasks.evaluate.metrics_point import METRICS, aggregate, binary_metrics, calibration
from tasks.evaluate.metrics_bootstrap import bootstrap_intervals
from tasks.evaluate.metrics import evaluate_predictions


def _no_nan(obj: object) -> None:
    """JSON with NaN forbidden: proves no metric is a silent NaN."""
    json.dumps(obj, allow_nan=False)


# --------------------------------------------------------------------------------------
# binary_metrics
# --------------------------------------------------------------------------------------

# Ten cases; the 0.5 case is a negative called positive ("at or above" the threshold).
LABELS = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
PROBS = [0.9, 0.8, 0.4, 0.6, 0.3, 0.2, 0.7, 0.1, 0.5, 0.05]


def test_binary_metrics_match_hand_computed_counts() -> None:
    m = binary_metrics(LABELS, PROBS, 0.5)
    # Called positive: 0.9, 0.8, 0.6 (tumour) and 0.7, 0.5 (normal); missed: 0.4.
    assert m["confusion"] == {"tn": 4, "fp": 2, "fn": 1, "tp": 3}
    assert (m["n"], m["n_positive"], m["n_negative"], m["n_predicted_positive"]) == (10, 4, 6, 5)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["ppv"] == pytest.approx(3 / 5)
    assert m["npv"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    # Pairs (tumour, normal) ranked right: 6 + 6 + 5 (0.6 < 0.7) + 4 (0.4 < 0.5, 0.7) of 24.
    assert m["roc_auc"] == pytest.approx(21 / 24)
    assert m["brier"] == pytest.approx((0.01 + 0.04 + 0.36 + 0.16 + 0.09 + 0.04 + 0.49 + 0.01 + 0.25 + 0.0025) / 10)
    assert m["undefined"] == {}
    _no_nan(m)


def test_threshold_moves_the_calls() -> None:
    m = binary_metrics(LABELS, PROBS, 0.75)
    assert m["confusion"] == {"tn": 6, "fp": 0, "fn": 2, "tp": 2}


def test_split_without_positives_gives_none_with_reasons() -> None:
    m = binary_metrics([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], 0.5)
    assert m["sensitivity"] is None and m["roc_auc"] is None
    assert "no positive" in m["undefined"]["sensitivity"] and "split" in m["undefined"]["sensitivity"]
    assert "no positive" in m["undefined"]["roc_auc"]
    # Nothing called positive and nothing to find: PPV and F1 are 0/0, not 0.
    assert m["ppv"] is None and "threshold 0.5" in m["undefined"]["ppv"]
    assert m["f1"] is None and "f1" in m["undefined"]
    assert m["specificity"] == 1.0 and m["accuracy"] == 1.0 and m["npv"] == 1.0
    assert set(m["undefined"]) == {"sensitivity", "roc_auc", "ppv", "f1"}
    _no_nan(m)


def test_no_negatives_and_no_predicted_negatives() -> None:
    m = binary_metrics([1, 1], [0.9, 0.6], 0.5)
    assert m["specificity"] is None and "no negative" in m["undefined"]["specificity"]
    assert m["npv"] is None and "called negative" in m["undefined"]["npv"]
    assert m["roc_auc"] is None
    assert m["sensitivity"] == 1.0


def test_nothing_called_positive_keeps_f1_defined_as_zero() -> None:
    m = binary_metrics([1, 0, 0], [0.2, 0.1, 0.3], 0.5)
    assert m["ppv"] is None and m["f1"] == 0.0 and m["sensitivity"] == 0.0


def test_empty_input_is_all_undefined() -> None:
    m = binary_metrics([], [], 0.5)
    assert all(m[k] is None for k in METRICS)
    assert set(m["undefined"]) == set(METRICS)


@pytest.mark.parametrize(
    ("labels", "probs", "match"),
    [([0, 2], [0.1, 0.2], "labels must be 0 or 1"), ([0, 1], [0.1, 1.2], "probabilities"),
     ([0, 1], [0.1, float("nan")], "probabilities"), ([0, 1], [0.1], "equal length")],
)
def test_bad_inputs_are_rejected(labels: list, probs: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        binary_metrics(labels, probs, 0.5)


# --------------------------------------------------------------------------------------
# aggregate
# --------------------------------------------------------------------------------------


@pytest.fixture
def slices() -> pd.DataFrame:
    return pd.DataFrame({
        "patient_id": ["A", "A", "A", "B", "B"],
        "study_uid": ["S1", "S1", "S1", "S2", "S2"],
        "view": ["lcc", "lcc", "rcc", "lcc", "lcc"],
        "slice_index": [3, 4, 2, 1, 5],
        "label": [0, 1, 0, 0, 0],
        "probability": [0.2, 0.6, 0.1, 0.3, 0.5],
        "cohort": ["benign", "cancer", "normal", "normal", "normal"],
        "split": "test",
    })


def test_aggregate_volume_max_and_mean(slices: pd.DataFrame) -> None:
    vmax = aggregate(slices, "volume", "max")
    assert list(vmax[["patient_id", "view"]].itertuples(index=False, name=None)) == [
        ("A", "lcc"), ("A", "rcc"), ("B", "lcc")]
    assert vmax["label"].tolist() == [1, 0, 0]
    assert vmax["probability"].tolist() == pytest.approx([0.6, 0.1, 0.5])
    assert vmax["n_slices"].tolist() == [2, 1, 2]
    # The most severe cohort of the volume's slices.
    assert vmax["cohort"].tolist() == ["cancer", "normal", "normal"]
    vmean = aggregate(slices, "volume", "mean")
    assert vmean["probability"].tolist() == pytest.approx([0.4, 0.1, 0.4])


def test_aggregate_patient_max_and_mean(slices: pd.DataFrame) -> None:
    pmax = aggregate(slices, "patient", "max")
    assert pmax["patient_id"].tolist() == ["A", "B"]
    assert pmax["label"].tolist() == [1, 0]
    assert pmax["probability"].tolist() == pytest.approx([0.6, 0.5])
    assert pmax["cohort"].tolist() == ["cancer", "normal"]
    assert pmax["split"].tolist() == ["test", "test"]
    # Mean over the patient's slices, not over its volumes.
    pmean = aggregate(slices, "patient", "mean")
    assert pmean["probability"].tolist() == pytest.approx([0.3, 0.4])


def test_aggregate_slice_level_is_the_rows(slices: pd.DataFrame) -> None:
    out = aggregate(slices, "slice", "max")
    assert out["probability"].tolist() == slices["probability"].tolist()
    assert (out["n_slices"] == 1).all()


def test_aggregate_rejects_unknown_level_and_method(slices: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="level 'breast'.*allowed"):
        aggregate(slices, "breast", "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aggregate 'median'.*allowed"):
        aggregate(slices, "patient", "median")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------


def _patients(n_pos: int, n_neg: int, seed: int = 0, slices_per: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_pos + n_neg):
        label = int(i < n_pos)
        for s in range(slices_per):
            p = float(np.clip(rng.normal(0.7 if label else 0.3, 0.2), 0, 1))
            rows.append({"patient_id": f"P{i:03d}", "study_uid": f"S{i:03d}", "view": ["lcc", "rcc"][s % 2],
                         "slice_index": s, "label": label, "probability": p,
                         "cohort": ("cancer" if i % 2 else "benign") if label else "normal", "split": "test"})
    return pd.DataFrame(rows)


def test_bootstrap_draws_patients_not_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    pred = _patients(4, 6, slices_per=5)  # 50 rows, 10 patients
    sizes: list[int] = []
    real = bootstrap_mod._draw_patients

    def spy(rng: np.random.Generator, n_patients: int) -> np.ndarray:
        sizes.append(n_patients)
        return real(rng, n_patients)

    monkeypatch.setattr(bootstrap_mod, "_draw_patients", spy)
    bootstrap_intervals(pred, "slice", "max", 0.5, n=25, ci=0.95, seed=1)
    assert sizes == [10] * 25


def test_one_resample_equals_metrics_of_the_drawn_patients_rows() -> None:
    """With n = 1 the interval is [v, v], v = the metric on the drawn patients' rows, duplicates kept."""
    pred = _patients(5, 7, seed=3)
    pred["probability"] = pred["probability"].round(1)  # ties, which ROC AUC counts one half
    patients = np.unique(pred["patient_id"].astype(str))
    draw = np.random.default_rng(11).integers(0, len(patients), size=len(patients))
    resampled = pd.concat(
        [pred[pred["patient_id"] == patients[k]].assign(patient_id=f"{patients[k]}#{j}") for j, k in enumerate(draw)]
    )
    for level in ("slice", "volume", "patient"):
        out = bootstrap_intervals(pred, level, "max", 0.5, n=1, ci=0.95, seed=11)
        table = aggregate(resampled, level, "max")
        expected = binary_metrics(table["label"], table["probability"], 0.5)
        for metric in METRICS:
            if expected[metric] is None:
                assert out["intervals"][metric] is None and out["n_valid"][metric] == 0
            else:
                assert out["intervals"][metric] == pytest.approx([expected[metric]] * 2), (level, metric)
        for cohort in ("benign", "cancer"):
            sub = table[table["label"].eq(0) | table["cohort"].eq(cohort)]
            one = binary_metrics(sub["label"], sub["probability"], 0.5)
            for metric in ("sensitivity", "roc_auc"):
                assert out["intervals"][f"{metric}_{cohort}"] == pytest.approx([one[metric]] * 2), (level, cohort)


def test_patient_resampling_widens_intervals_for_clustered_slices() -> None:
    """One patient holds 40 misclassified slices: resampling slices would hide that."""
    rows = [{"patient_id": "BIG", "study_uid": "S", "view": "lcc", "slice_index": i, "label": 1,
             "probability": 0.1} for i in range(40)]
    rows += [{"patient_id": f"P{i:02d}", "study_uid": f"S{i}", "view": "lcc", "slice_index": 0, "label": i % 2,
              "probability": 0.9 if i % 2 else 0.1} for i in range(30)]
    pred = pd.DataFrame(rows)
    point = binary_metrics(pred["label"], pred["probability"])["accuracy"]
    by_patient = bootstrap_intervals(pred, "slice", "max", 0.5, n=500, ci=0.95, seed=0)["intervals"]["accuracy"]
    rng = np.random.default_rng(0)
    correct = ((pred["probability"] >= 0.5) == (pred["label"] == 1)).to_numpy()
    naive = [correct[rng.integers(0, len(correct), len(correct))].mean() for _ in range(500)]
    by_slice = np.quantile(naive, [0.025, 0.975])
    assert by_patient[0] <= point <= by_patient[1]
    assert by_patient[1] - by_patient[0] > 2 * (by_slice[1] - by_slice[0])


def test_bootstrap_contains_point_is_seeded_and_counts_valid_resamples() -> None:
    pred = _patients(2, 18, seed=5)
    a = bootstrap_intervals(pred, "patient", "max", 0.5, n=300, ci=0.95, seed=7)
    b = bootstrap_intervals(pred, "patient", "max", 0.5, n=300, ci=0.95, seed=7)
    c = bootstrap_intervals(pred, "patient", "max", 0.5, n=300, ci=0.95, seed=8)
    assert a == b and a != c
    assert a["unit"] == "patient" and a["n_resamples"] == 300 and a["n_patients"] == 20
    table = aggregate(pred, "patient", "max")
    point = binary_metrics(table["label"], table["probability"])
    for metric in ("accuracy", "specificity", "brier"):
        low, high = a["intervals"][metric]
        assert low <= point[metric] <= high
        assert a["n_valid"][metric] == 300
    # With 2 tumour patients in 20, about (18/20)^20 = 12% of resamples draw none.
    assert 200 < a["n_valid"]["sensitivity"] < 300
    assert a["n_valid"]["roc_auc"] == a["n_valid"]["sensitivity"]
    _no_nan(a)


def test_bootstrap_zero_resamples_gives_no_intervals() -> None:
    out = bootstrap_intervals(_patients(3, 3), "patient", "max", 0.5, n=0, ci=0.95, seed=0)
    assert all(v is None for v in out["intervals"].values())
    assert all(v == 0 for v in out["n_valid"].values())


# --------------------------------------------------------------------------------------
# calibration and evaluate_predictions
# --------------------------------------------------------------------------------------


def test_calibration_bins_by_hand() -> None:
    cal = calibration([0, 0, 1, 1], [0.05, 0.15, 0.12, 0.95], n_bins=10)
    assert cal["brier"] == pytest.approx((0.05**2 + 0.15**2 + 0.88**2 + 0.05**2) / 4)
    bins = [(b["lower"], b["upper"], b["count"]) for b in cal["bins"]]
    assert bins == [(0.0, 0.1, 1), (0.1, 0.2, 2), (0.9, 1.0, 1)]
    assert [b["observed"] for b in cal["bins"]] == pytest.approx([0.0, 0.5, 1.0])
    assert [b["mean_predicted"] for b in cal["bins"]] == pytest.approx([0.05, 0.135, 0.95])


def test_evaluate_predictions_levels_cohorts_and_json() -> None:
    # Patient level: 2 benign (1 found), 3 cancer (all found), 5 normal (1 false alarm).
    probs = {"B0": 0.8, "B1": 0.2, "C0": 0.9, "C1": 0.7, "C2": 0.6, "N0": 0.1, "N1": 0.2, "N2": 0.3, "N3": 0.4,
             "N4": 0.55}
    rows = []
    for pid, p in probs.items():
        cohort = {"B": "benign", "C": "cancer", "N": "normal"}[pid[0]]
        for k, view in enumerate(("lcc", "rcc")):
            rows.append({"patient_id": pid, "study_uid": f"S-{pid}", "view": view, "slice_index": 1,
                         "label": int(cohort != "normal" and k == 0), "probability": p if k == 0 else p / 2,
                         "cohort": cohort if k == 0 else "normal", "split": "test"})
    pred = pd.DataFrame(rows)
    out = evaluate_predictions(pred, how="max", threshold=0.5, bootstrap=200, ci=0.9, seed=0, calibration_bins=5)
    _no_nan(out)
    assert out["n"] == {"slice": 20, "volume": 20, "patient": 10}
    assert out["splits"] == ["test"] and out["threshold"] == 0.5 and out["aggregate"] == "max"
    patient = out["levels"]["patient"]
    assert patient["confusion"] == {"tn": 4, "fp": 1, "fn": 1, "tp": 4}
    assert patient["metrics"]["sensitivity"] == pytest.approx(4 / 5)
    assert patient["by_cohort"]["benign"]["sensitivity"] == pytest.approx(1 / 2)
    assert patient["by_cohort"]["benign"]["n_positive"] == 2
    assert patient["by_cohort"]["cancer"]["sensitivity"] == pytest.approx(1.0)
    assert patient["by_cohort"]["cancer"]["n_negative"] == 5
    for level in ("slice", "volume", "patient"):
        entry = out["levels"][level]
        assert set(entry["metrics"]) == set(METRICS)
        assert sum(b["count"] for b in entry["calibration"]["bins"]) == entry["n"]
        assert entry["calibration"]["brier"] == pytest.approx(entry["metrics"]["brier"])
        for metric, interval in entry["intervals"].items():
            value = entry["metrics"][metric]
            assert interval is not None and interval[0] <= interval[1]
            assert math.isfinite(value)
    assert out["levels"]["slice"]["by_cohort"]["cancer"]["intervals"]["sensitivity"] is not None


def test_evaluate_predictions_reports_undefined_metrics_per_cohort() -> None:
    pred = pd.DataFrame({
        "patient_id": ["A", "B", "C"], "study_uid": ["1", "2", "3"], "view": "lcc", "slice_index": 0,
        "label": [1, 0, 0], "probability": [0.9, 0.2, 0.4], "cohort": ["cancer", "normal", "normal"],
    })
    out = evaluate_predictions(pred, bootstrap=50)
    benign = out["levels"]["patient"]["by_cohort"]["benign"]
    assert benign["sensitivity"] is None and "no benign" in benign["undefined"]["sensitivity"]
    assert benign["intervals"]["sensitivity"] is None and benign["n_valid"]["sensitivity"] == 0
    _no_nan(out)


def test_evaluate_predictions_rejects_empty_table() -> None:
    with pytest.raises(ValueError, match="empty"):
        evaluate_predictions(pd.DataFrame(columns=["patient_id", "label", "probability"]))


# --------------------------------------------------------------------------------------
# Null baseline, degenerate models, chance loss
# --------------------------------------------------------------------------------------


def _random_scores_manifest(n_pos: int = 40, n_neg: int = 60, pos_images: int = 3, seed: int = 1) -> pd.DataFrame:
    """A prediction table with random scores: each positive patient has ``pos_images`` images, each normal one."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_pos + n_neg):
        label = int(i < n_pos)
        for s in range(pos_images if label else 1):
            rows.append({"patient_id": f"P{i:03d}", "study_uid": f"S{i:03d}", "view": "lcc", "slice_index": s,
                         "label": label, "probability": float(rng.random()), "split": "test"})
    return pd.DataFrame(rows)


def test_random_scores_null_auc_matches_hand_computation_and_is_flagged() -> None:
    pred = _random_scores_manifest()
    result = evaluate_predictions(pred, bootstrap=200, seed=3)
    patient = result["levels"]["patient"]
    # By hand: a positive patient's score is the max of 3 uniform draws, a normal's is one
    # draw, so P(positive above normal) = 3/4.
    assert patient["null_roc_auc"] == pytest.approx(3 / 4, abs=0.03)
    low, high = patient["null_roc_auc_range"]
    assert low < patient["null_roc_auc"] < high
    # The image (slice) level has no aggregation: its null is 1/2.
    assert result["levels"]["slice"]["null_roc_auc"] == pytest.approx(0.5, abs=0.03)
    for level in ("slice", "volume", "patient"):
        assert result["levels"][level]["better_than_null"] is False
        assert "not better than chance" in result["levels"][level]["null_warning"]
    assert result["null"] == {"draws": 200, "seed": 3, "method": "permutation"}
    _no_nan(result)


def test_null_auc_is_seeded_and_mean_aggregation_removes_the_count_bias() -> None:
    pred = _random_scores_manifest(n_pos=20, n_neg=20, pos_images=4)
    a = bootstrap_mod.null_roc_auc(pred, "patient", "max", draws=50, seed=7)
    b = bootstrap_mod.null_roc_auc(pred, "patient", "max", draws=50, seed=7)
    assert a == b
    assert a["null_roc_auc"] == pytest.approx(0.8, abs=0.04)  # 4 / (4 + 1)
    mean = bootstrap_mod.null_roc_auc(pred, "patient", "mean", draws=50, seed=7)
    assert mean["null_roc_auc"] == pytest.approx(0.5, abs=0.05)
    one_class = bootstrap_mod.null_roc_auc(pred[pred["label"] == 1], "patient", draws=5)
    assert one_class["null_roc_auc"] is None and "one class" in one_class["reason"]


def test_a_model_that_separates_is_better_than_the_null() -> None:
    pred = _random_scores_manifest(pos_images=1)
    pred["probability"] = np.where(pred["label"] == 1, 0.6 + 0.3 * pred["probability"], 0.4 * pred["probability"])
    result = evaluate_predictions(pred, bootstrap=100, null_draws=50)
    assert result["levels"]["patient"]["better_than_null"] is True
    assert result["levels"]["patient"]["null_warning"] is None
    assert result["degenerate"] is False and result["degenerate_reason"] is None


def test_constant_output_model_is_degenerate() -> None:
    pred = _random_scores_manifest(n_pos=10, n_neg=10)
    # The collapsed VGG16 of the issue: 0.494899 +- 6e-7 for every image, all called normal.
    pred["probability"] = 0.494899 + 6e-7 * np.random.default_rng(0).standard_normal(len(pred))
    result = evaluate_predictions(pred, bootstrap=0, null_draws=20)
    assert result["degenerate"] is True
    assert "hardly vary" in result["degenerate_reason"]
    assert "called normal" in result["degenerate_reason"]
    # All called tumour, with spread: degenerate for the other reason only.
    flagged, why = chance_mod.degeneracy(np.linspace(0.6, 0.9, 20), 0.5)
    assert flagged and "called tumour" in why and "hardly vary" not in why
    assert chance_mod.degeneracy(np.linspace(0.1, 0.9, 20), 0.5) == (False, None)


def test_constant_predictor_loss_is_the_weighted_chance_loss() -> None:
    import torch
    import torch.nn.functional as F

    # Unweighted: the entropy of the prevalence.
    assert chance_mod.constant_predictor_loss(1, 3) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    # Weighted by n_neg / n_pos: the best constant is 1/2 and the loss 2 * n_neg / n * log 2.
    loss = chance_mod.constant_predictor_loss(10, 90, 9.0)
    assert loss == pytest.approx(2 * 90 / 100 * math.log(2))
    # No constant logit does better in torch's own weighted BCE.
    target = torch.tensor([1.0] * 10 + [0.0] * 90)
    best = min(float(F.binary_cross_entropy_with_logits(torch.full((100,), z), target, pos_weight=torch.tensor(9.0)))
               for z in np.linspace(-3, 3, 601))
    assert best == pytest.approx(loss, abs=1e-4)
    manifest = pd.DataFrame({"split": ["train"] * 100 + ["validation"] * 20,
                             "label": [1] * 10 + [0] * 90 + [1] * 4 + [0] * 16})
    chance = chance_mod.chance_losses(manifest, "weights")
    assert chance["train"] == pytest.approx(loss) and chance["pos_weight"] == pytest.approx(9.0)
    assert chance["validation"] == pytest.approx(chance_mod.constant_predictor_loss(4, 16, 9.0))
    assert chance_mod.chance_losses(manifest, "sampler")["train"] == pytest.approx(math.log(2))
    assert chance_mod.chance_losses(manifest, "none", aux_weight=0.4)["train"] == pytest.approx(
        1.4 * chance_mod.constant_predictor_loss(10, 90))


def test_floor_scorers_constant_and_random() -> None:
    pred = _random_scores_manifest(n_pos=10, n_neg=10)
    floors = metrics_mod.floor_scorers(pred, bootstrap=20, null_draws=20, seed=2)
    constant, random = floors["constant"], floors["random"]
    assert constant["levels"]["patient"]["metrics"]["roc_auc"] == 0.5  # every ranking a tie
    assert constant["levels"]["slice"]["metrics"]["sensitivity"] == 1.0  # at the threshold: called tumour
    assert constant["degenerate"] is True
    assert random["degenerate"] is False
    assert random["levels"]["patient"]["better_than_null"] is False
    assert metrics_mod.floor_scorers(pred, bootstrap=0, null_draws=5, seed=2)["random"]["levels"]["slice"][
        "metrics"] == metrics_mod.floor_scorers(pred, bootstrap=0, null_draws=5, seed=2)["random"]["levels"][
        "slice"]["metrics"]
    _no_nan(floors)
