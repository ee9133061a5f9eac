"""Tests for tasks.prepare.splits: patient-level, stratified, deterministic splits."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tasks.core.schema import SPLITS
from tasks.core.split_leaks import assert_disjoint
from tasks.prepare.splits import (
    SplitClassError,
    allocate,
    _draw,
    check_split_classes,
    cohort_counts,
    split_audit,
    split_patients,
)


def assign_splits(table: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """Each row's split by patient (every patient has one)."""
    merged = table.merge(splits[["patient_id", "split"]], on="patient_id", how="left", validate="many_to_one")
    assert merged["split"].notna().all()
    return merged

FRACTIONS = [
    (0.7, 0.15, 0.15),
    (0.8, 0.2, 0.0),
    (0.5, 0.0, 0.5),
    (1.0, 0.0, 0.0),
    (0.0, 0.0, 1.0),
    (0.0, 0.5, 0.5),
    (1 / 3, 1 / 3, 1 / 3),
    (0.9, 0.05, 0.05),
]


def make_volumes() -> pd.DataFrame:
    """60 normal, 8 benign, 2 cancer and 1 actionable-only patient, several volumes each."""
    rows = []
    for i in range(71):
        pid = f"DBT-P{i:05d}"
        worst = "cancer" if i < 2 else "benign" if i < 10 else "actionable" if i == 70 else "normal"
        n_views = 1 if worst == "actionable" else 1 + i % 4
        for view in ("lcc", "lmlo", "rcc", "rmlo")[:n_views]:
            cohort = worst if view == "lcc" else "normal"
            reason = "actionable" if cohort == "actionable" else None
            rows.append((pid, f"S{i}", view, cohort, reason))
    frame = pd.DataFrame(rows, columns=["patient_id", "study_uid", "view", "cohort", "excluded_reason"])
    frame["label"] = frame["cohort"].map({"normal": 0, "benign": 1, "cancer": 1}).astype("Int8")
    return frame


VOLUMES = make_volumes()


def test_allocate_counts() -> None:
    assert allocate(2, (0.7, 0.15, 0.15)) == (1, 0, 1)  # two cancer patients: not both in train
    assert allocate(1, (0.7, 0.15, 0.15)) == (1, 0, 0)
    assert allocate(3, (0.7, 0.15, 0.15)) == (1, 1, 1)
    assert allocate(100, (0.7, 0.15, 0.15)) == (70, 15, 15)
    assert allocate(2, (0.0, 0.0, 1.0)) == (0, 0, 2)
    assert allocate(5, (0.8, 0.2, 0.0)) == (4, 1, 0)
    for n in range(30):
        for fractions in FRACTIONS:
            counts = allocate(n, fractions)
            assert sum(counts) == n
            assert all(c == 0 for c, f in zip(counts, fractions) if f == 0)


@pytest.mark.parametrize("fractions", FRACTIONS)
def test_split_is_by_patient_for_any_fractions_and_seed(fractions: tuple[float, float, float]) -> None:
    used = VOLUMES.loc[VOLUMES["excluded_reason"].isna()]
    for seed in range(20):
        splits = split_patients(VOLUMES, fractions=fractions, seed=seed)
        assert splits["patient_id"].is_unique
        assert set(splits["patient_id"]) == set(used["patient_id"])  # the actionable-only patient is out
        assert set(splits["split"]) <= set(SPLITS)
        manifest = assign_splits(used, splits)
        assert_disjoint(manifest)
        assert split_audit(manifest)["overlap_patients"] == 0
        for split, fraction in zip(SPLITS, fractions):
            if fraction == 0:
                assert not (splits["split"] == split).any()
        strata = splits.groupby("stratum")["split"]
        if fractions[0] > 0:  # every stratum is represented in train
            assert strata.apply(lambda s: (s == "train").any()).all()
        if sum(f > 0 for f in fractions) >= 2:  # the two cancer patients are not in one split
            assert strata.nunique()["cancer"] == 2


def test_proportions_follow_the_fractions() -> None:
    splits = split_patients(VOLUMES, fractions=(0.7, 0.15, 0.15), seed=0)
    normal = splits.loc[splits["stratum"] == "normal", "split"].value_counts()
    assert normal.to_dict() == {"train": 42, "validation": 9, "test": 9}
    assert splits.loc[splits["stratum"] == "benign", "split"].value_counts().to_dict() == {
        "train": 6, "validation": 1, "test": 1}


def test_stratum_is_the_most_severe_used_cohort() -> None:
    splits = split_patients(VOLUMES, seed=0).set_index("patient_id")["stratum"]
    assert splits["DBT-P00001"] == "cancer"  # one cancer volume among normals
    assert splits["DBT-P00005"] == "benign"
    assert splits["DBT-P00011"] == "normal"
    assert "DBT-P00070" not in splits.index  # its only volume is excluded (actionable)


def test_deterministic_and_independent_of_row_order() -> None:
    a = split_patients(VOLUMES, seed=3)
    b = split_patients(VOLUMES.sample(frac=1, random_state=1).reset_index(drop=True), seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert a["patient_id"].is_monotonic_increasing
    c = split_patients(VOLUMES, seed=4)
    assert not a["split"].equals(c["split"])  # the seed matters


def test_tiny_strata_do_not_crash() -> None:
    one = VOLUMES.loc[VOLUMES["patient_id"].isin(["DBT-P00000", "DBT-P00020"])]
    splits = split_patients(one, fractions=(0.7, 0.15, 0.15), seed=0)
    assert dict(zip(splits["stratum"], splits["split"])) == {"cancer": "train", "normal": "train"}
    empty = split_patients(VOLUMES.iloc[:0], seed=0)
    assert empty.empty and list(empty.columns) == ["patient_id", "split", "stratum"]


@pytest.mark.parametrize("fractions", [(0.7, 0.2, 0.2), (0.7, 0.3), (1.2, -0.1, -0.1), (0.5, float("nan"), 0.5), "abc"])
def test_bad_fractions_are_rejected(fractions: object) -> None:
    with pytest.raises(ValueError, match="fractions"):
        split_patients(VOLUMES, fractions=fractions)  # type: ignore[arg-type]


def test_split_audit_counts() -> None:
    used = VOLUMES.loc[VOLUMES["excluded_reason"].isna()]
    manifest = assign_splits(used, split_patients(VOLUMES, seed=0))
    audit = split_audit(manifest)
    json.dumps(audit)
    assert audit["overlap_patients"] == 0
    assert audit["patients"] == 70 and audit["rows"] == len(used)
    assert sum(s["rows"] for s in audit["splits"].values()) == len(used)
    assert audit["splits"]["test"]["by_cohort"]["cancer"] == {"patients": 1, "rows": 1}
    assert sum(s["by_label"]["1"]["rows"] for s in audit["splits"].values()) == 10
    leaked = pd.concat([manifest, manifest.iloc[:1].assign(split="test" if manifest["split"].iloc[0] != "test" else "train")])
    assert split_audit(leaked)["overlap_patients"] == 1


def test_draw_is_group_shuffle_split_over_one_row_per_patient() -> None:
    # _draw replaced GroupShuffleSplit over a one-row-per-patient table: the splits must not move.
    from sklearn.model_selection import GroupShuffleSplit

    for n in range(2, 30):
        patients = [f"DBT-P{i:05d}" for i in range(n)]
        for k in range(1, n):
            for seed in (0, 7, 2**30 + 1):
                splitter = GroupShuffleSplit(n_splits=1, test_size=k, random_state=seed)
                _, taken = next(splitter.split(patients, groups=patients))
                assert _draw(n, k, seed).tolist() == taken.tolist()


def _patients(cancer: int, benign: int, normal: int) -> pd.DataFrame:
    """One volume per patient: ``cancer`` + ``benign`` tumour patients and ``normal`` others."""
    cohorts = ["cancer"] * cancer + ["benign"] * benign + ["normal"] * normal
    frame = pd.DataFrame({"patient_id": [f"DBT-P{i:05d}" for i in range(len(cohorts))],
                          "study_uid": [f"S{i}" for i in range(len(cohorts))], "view": "lcc", "cohort": cohorts})
    frame["label"] = frame["cohort"].map({"normal": 0, "benign": 1, "cancer": 1}).astype("Int8")
    return frame


@pytest.mark.parametrize("fractions", [(0.7, 0.15, 0.15), (1 / 3, 1 / 3, 1 / 3), (0.9, 0.05, 0.05), (0.8, 0.2, 0.0)])
def test_every_split_gets_both_classes_from_three_patients_of_each(fractions: tuple[float, float, float]) -> None:
    # Two cancer and two benign patients used to go (1, 0, 1) each: no tumour in validation.
    for n_pos in range(3, 8):
        for cancer in sorted({0, 1, 2, n_pos // 2, n_pos}):
            for n_neg in (3, 5):
                volumes = _patients(cancer, n_pos - cancer, n_neg)
                for seed in range(2):
                    splits = split_patients(volumes, fractions=fractions, seed=seed)
                    labels = splits.assign(label=splits["stratum"].ne("normal")).groupby("split")["label"]
                    for split, fraction in zip(SPLITS, fractions):
                        held = set(labels.get_group(split)) if split in labels.groups else set()
                        assert (held == {False, True}) if fraction > 0 else not held, (
                            f"{split}: {held} ({cancer} cancer, {n_pos - cancer} benign, {n_neg} normal, seed {seed})")
                    check_split_classes(volumes, splits, fractions=fractions)


def test_cohorts_are_spread_within_the_label() -> None:
    splits = split_patients(_patients(2, 2, 8), seed=0)
    by = splits.groupby("stratum")["split"]
    assert by.nunique()["cancer"] == 2 and by.nunique()["benign"] == 2  # neither pair shares a split
    tumour = splits.loc[splits["stratum"] != "normal", "split"].value_counts().to_dict()
    assert tumour == {"train": 2, "validation": 1, "test": 1}
    assert cohort_counts({"cancer": 2, "benign": 2}, (0.7, 0.15, 0.15)) == {"cancer": (1, 0, 1), "benign": (1, 1, 0)}


def test_too_few_patients_of_a_class_is_reported_with_counts() -> None:
    volumes = _patients(1, 1, 9)
    splits = split_patients(volumes, seed=0)
    with pytest.raises(SplitClassError) as err:
        check_split_classes(volumes, splits, fractions=(0.7, 0.15, 0.15))
    text = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "validation has no tumour" in text
    assert "validation: 0 tumour volumes (0 patients)" in text
    assert "2 patients with a tumour and 9 without" in text and "at least 3 patients of each class" in text
    assert "split_fractions" in text and "--patients" in text
    # Two tumour patients are enough without a test split.
    fractions = (0.8, 0.2, 0.0)
    counts = check_split_classes(volumes, split_patients(volumes, fractions=fractions, seed=0), fractions=fractions)
    assert counts["validation"]["tumour"] == {"volumes": 1, "patients": 1}
    assert counts["test"]["normal"] == {"volumes": 0, "patients": 0}
