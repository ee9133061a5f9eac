"""The plan's ids (distinct across seeds) and its default share of positive patients (enough in every split)."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from synth.generate import generate_dataset
from synth.plan import DEFAULT_POSITIVE_FRACTION, plan, seeded_id
from tasks.core.config import SlicesConfig
from tasks.core.schema import COHORT_LABEL, COHORTS
from tasks.prepare.splits import split_patients

TINY = dict(patients=120, rows=32, columns=32, frames=(1, 2), reports=False)


def _ids(root: Path) -> dict[str, set[str]]:
    """PatientID, StudyUID (CSV and DICOM StudyID), StudyInstanceUID, SeriesInstanceUID and
    SOPInstanceUID of every volume of a written collection."""
    out: dict[str, set[str]] = {k: set() for k in ("patient", "study", "study_instance", "series", "sop")}
    for path in root.glob("*file-paths*.csv"):
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                out["patient"].add(row["PatientID"])
                out["study"].add(row["StudyUID"])
    for dcm in root.rglob("*.dcm"):
        ds = pydicom.dcmread(dcm, stop_before_pixels=True)
        out["patient"].add(str(ds.PatientID))
        out["study"].add(str(ds.StudyID))
        out["study_instance"].add(str(ds.StudyInstanceUID))
        out["series"].add(str(ds.SeriesInstanceUID))
        out["sop"].add(str(ds.SOPInstanceUID))
    return out


def test_collections_of_different_seeds_share_no_id(tmp_path: Path) -> None:
    # Ids drawn from one pool of 5060 numbers whatever the seed would repeat across collections:
    # two 120-patient collections of different seeds would share some patient ids.
    generate_dataset(tmp_path / "a", seed=0, **TINY)
    generate_dataset(tmp_path / "b", seed=1, **TINY)
    first, second = _ids(tmp_path / "a"), _ids(tmp_path / "b")
    for kind in first:
        assert len(first[kind]) >= 120 and len(second[kind]) >= 120, kind
        assert not first[kind] & second[kind], (kind, sorted(first[kind] & second[kind])[:5])
    # Seed 0 keeps the release's shape; another seed puts itself before the five digits.
    assert all(len(p) == len("DBT-P00013") and p.startswith("DBT-P") for p in first["patient"])
    assert all(p.startswith("DBT-P1") and len(p) == len("DBT-P100013") for p in second["patient"])
    assert all(s.startswith("DBT-S1") and len(s) == len("DBT-S100163") for s in second["study"])


def test_seeded_ids_are_distinct_for_any_two_seeds() -> None:
    # Seed then five digits: no two (seed, number) pairs give the same text, 1 and 11 included.
    pairs = [(s, n) for s in (0, 1, 2, 10, 11, 12, 110) for n in (1, 13, 1000, 10013, 99999)]
    assert len({seeded_id("P", s, n) for s, n in pairs}) == len(pairs)
    assert seeded_id("P", 0, 13) == "DBT-P00013" and seeded_id("S", 7, 163) == "DBT-S700163"
    with pytest.raises(ValueError, match="id number 100000"):
        seeded_id("P", 0, 100_000)
    # The boxes' Subject stays the number of the PatientID, as in the release.
    people, _, _ = plan(patients=5, seed=7, rows=32, cols=32, frames=(1, 1), positive_fraction=None)
    assert all(p.patient_id == f"DBT-P{p.number}" for p in people)


def _patients_per_split(patients: int, seed: int) -> pd.DataFrame:
    """Positive and normal patients per split, the pipeline's default splits over a default collection."""
    _, volumes, _ = plan(patients=patients, seed=seed, rows=32, cols=32, frames=(1, 1), positive_fraction=None)
    table = pd.DataFrame({
        "patient_id": [v.patient_id for v in volumes],
        "cohort": [COHORTS[max(i for i, f in enumerate(v.flags) if f)] for v in volumes],
    })
    table["label"] = table["cohort"].map(COHORT_LABEL)
    used = table[table["label"].notna()].assign(label=lambda t: t["label"].astype(int))
    splits = split_patients(used, fractions=SlicesConfig().split_fractions, seed=0)
    label = used.groupby("patient_id")["label"].max()
    return splits.assign(label=splits["patient_id"].map(label)).groupby(["split", "label"]).size().unstack()


@pytest.mark.parametrize("patients", [100, 160, 400])
def test_the_default_share_gives_every_split_positive_patients(patients: int) -> None:
    # The release's proportions (3.6% positive) would be too few: a 160-patient collection
    # would hold 6 positive patients, one or two per evaluation split.
    assert DEFAULT_POSITIVE_FRACTION == 0.4
    for seed in (0, 3):
        counts = _patients_per_split(patients, seed)
        assert counts.loc["test", 1] >= 5 and counts.loc["validation", 1] >= 5, counts
        assert counts.loc["train", 1] >= 25, counts
        assert (counts[0] >= counts[1]).all(), counts  # still more normal than positive patients


def test_the_default_share_keeps_two_of_each_positive_cohort_in_tiny_collections() -> None:
    people, _, _ = plan(patients=6, seed=0, rows=32, cols=32, frames=(1, 1), positive_fraction=None)
    cohorts = [p.cohort for p in people]
    assert cohorts.count("benign") == 2 and cohorts.count("cancer") == 2
