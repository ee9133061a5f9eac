"""The plan of a synthetic collection: who has what, where it lives, where the lesions sit.

Everything is drawn from generators seeded by ``seed`` in a fixed order, so the same seed
gives the same plan (and so the same bytes); a change in the order of draws changes every
file. The collection's traps are planned here too: ``-NA-`` series folders, volumes stored
rotated by 180 degrees, wrong FrameLaterality headers, missing views, double flags.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synth.anatomy import Breast, Lesion, LesionSettings, Structure, plan_image, plan_structures, round_half_up
from synth.layout import deterministic_uid
from tasks.core.schema import COHORTS, COLLECTION_FOLDER, SPLITS, VIEWS


@dataclass
class Volume:
    """One view of one study: its label flags, folders, frame count, anatomy and traps."""

    index: int
    patient_id: str
    patient_number: int
    study_uid: str
    view: str
    split: str
    n_frames: int
    flags: tuple[int, int, int, int]
    study_folder: str
    series_number: int
    series_suffix: int
    breast: Breast | None = None
    lesions: list[Lesion] = field(default_factory=list)
    structures: list[Structure] = field(default_factory=list)
    n_lesions: int = 0
    rotated: bool = False
    na_drift: bool = False
    wrong_laterality: bool = False

    @property
    def key(self) -> str:
        return f"{self.patient_id}/{self.study_uid}/{self.view}"

    @property
    def side(self) -> str:
        return self.view[0].upper()

    @property
    def descriptive_path(self) -> str:
        return (
            f"{COLLECTION_FOLDER}/{self.patient_id}/{self.study_folder}/"
            f"{self.series_number}.000000-{self.series_suffix}/1-1.dcm"
        )

    @property
    def disk_path(self) -> str:
        """Where the file really is: the ``-NA-`` variant for drifted volumes."""
        if not self.na_drift:
            return self.descriptive_path
        return (
            f"{COLLECTION_FOLDER}/{self.patient_id}/{self.study_folder}/"
            f"{self.series_number}.000000-NA-{self.series_suffix}/1-1.dcm"
        )

    @property
    def classic_path(self) -> str:
        study = deterministic_uid(self.patient_id, self.study_uid)
        series = deterministic_uid(self.patient_id, self.study_uid, self.view)
        return f"{COLLECTION_FOLDER}/{self.patient_id}/{study}/{series}/1-1.dcm"


@dataclass
class Study:
    """One study of a patient: its cohort, finding side and views."""

    patient_index: int
    cohort: str
    extra: bool  # the second, normal study of a two-study patient
    side: str | None = None  # lesion / finding side, "l" or "r"
    double_flag: bool = False
    views: list[str] = field(default_factory=lambda: list(VIEWS))
    study_uid: str = ""
    number: int = 0
    date: _dt.date | None = None


@dataclass
class Patient:
    """One patient: the number in ``DBT-P#####`` (the boxes' ``Subject``), cohort, split and studies."""

    number: int
    patient_id: str
    cohort: str
    split: str = "train"
    studies: list[Study] = field(default_factory=list)


#: Share of positive (benign or cancer) patients when none is asked for. With the pipeline's
#: default splits (70/15/15 by patient, stratified by label) a 100-patient collection then
#: holds 40 positive patients: 28 / 6 / 6 in train / validation / test, enough for a
#: single-slice evaluation (one image per patient) in every split. (The release's own
#: proportions, 1.6% cancer and 2% benign, left a 160-patient collection with 6 positives.)
DEFAULT_POSITIVE_FRACTION = 0.4

#: Numbers in ``DBT-P#####`` / ``DBT-S#####`` stay below this (five digits, as in the release).
ID_BLOCK = 100_000


def seeded_id(kind: str, seed: int, number: int) -> str:
    """``DBT-P00013`` (``kind`` ``"P"``) or ``DBT-S00163`` (``"S"``) for ``number`` of a collection of ``seed``.

    Seed 0 writes the release's shape (five digits); seed ``s > 0`` puts ``s`` before the five
    digits (``DBT-P700013`` for seed 7), so collections written with different seeds never share
    a PatientID or StudyUID, nor the DICOM UIDs derived from them.
    """
    if not 0 < number < ID_BLOCK:
        raise ValueError(f"id number {number}: expected 1 to {ID_BLOCK - 1}")
    return f"DBT-{kind}{seed if seed else ''}{number:05d}"


def _cohort_counts(patients: int, positive_fraction: float | None) -> dict[str, int]:
    if positive_fraction is None:  # the default share, with a floor of 2 benign and 2 cancer
        positives = max(4, round_half_up(DEFAULT_POSITIVE_FRACTION * patients))
        benign = positives // 2
        cancer = positives - benign
    else:
        positives = round_half_up(positive_fraction * patients)
        benign = positives // 2
        cancer = positives - benign
    actionable = max(1, round_half_up(0.05 * patients))
    # Floors can exceed tiny datasets: the more severe cohorts keep their places first.
    cancer = min(cancer, patients)
    benign = min(benign, patients - cancer)
    actionable = min(actionable, patients - cancer - benign)
    normal = patients - cancer - benign - actionable
    return {"normal": normal, "actionable": actionable, "benign": benign, "cancer": cancer}


def _pick(rng: np.random.Generator, n: int, k: int, must: Sequence[int] = ()) -> set[int]:
    """``k`` distinct indices below ``n``, including ``must`` (as far as ``k`` allows)."""
    k = min(k, n)
    chosen = [int(i) for i in must][:k]
    rest = np.array(sorted(set(range(n)) - set(chosen)), dtype=np.int64)
    if k > len(chosen):
        chosen += [int(i) for i in rng.choice(rest, size=k - len(chosen), replace=False)]
    return set(chosen)


def _split_patients(rng: np.random.Generator, patients: list[Patient]) -> None:
    """Assign train / validation / test by patient, stratified by cohort (about 80/8/12)."""
    by_split: dict[str, list[int]] = {s: [] for s in SPLITS}
    for cohort in reversed(COHORTS):
        members = [i for i, p in enumerate(patients) if p.cohort == cohort]
        order = [members[int(j)] for j in rng.permutation(len(members))]
        n_test = round_half_up(0.12 * len(order))
        n_val = round_half_up(0.08 * len(order))
        by_split["test"] += order[:n_test]
        by_split["validation"] += order[n_test:n_test + n_val]
        by_split["train"] += order[n_test + n_val:]
    # Every split gets a patient when there are enough; move normal ones out of train.
    for split in ("validation", "test"):
        if not by_split[split] and len(patients) >= 3:
            movable = [i for i in by_split["train"] if patients[i].cohort == "normal"]
            donor = (movable or by_split["train"])[-1]
            by_split["train"].remove(donor)
            by_split[split].append(donor)
    for split, members in by_split.items():
        for i in members:
            patients[i].split = split


def plan(
    *, patients: int, seed: int, rows: int, cols: int, frames: tuple[int, int],
    positive_fraction: float | None, lesions: LesionSettings = LesionSettings(),
) -> tuple[list[Patient], list[Volume], dict[str, Any]]:
    """The patients, studies and volumes of a collection, with anatomy and lesions drawn.

    ``lesions`` sets their contrast, size and count (the default draws the ``easy`` level).

    Returns:
        ``(patients, volumes, extras)``; ``extras`` counts the two-study patients and the
        studies missing a view.
    """
    rng = np.random.default_rng([seed, 0])
    extras: dict[str, Any] = {}
    people = _people(rng, patients, positive_fraction, extras, seed)
    _split_patients(rng, people)
    volumes = _volumes(rng, people, frames)
    _traps(rng, volumes)
    if lesions.count is not None:  # after the traps' draws, so they stay as they were
        for v in volumes:
            if v.n_lesions:
                v.n_lesions = lesions.count
    for v in volumes:
        cls = "cancer" if v.flags[3] else "benign"
        ad_rng = np.random.default_rng([seed, 2, v.index])
        classes = [(cls, int(ad_rng.random() < 0.15)) for _ in range(v.n_lesions)]
        plan_image(v, rows, cols, seed, classes, lesions)
        if lesions.mimics is not None:  # own generator: the draws above stay as they were
            plan_structures(v, rows, cols, seed, lesions)
    return people, volumes, extras


def _people(
    rng: np.random.Generator, patients: int, positive_fraction: float | None,
    extras: dict[str, Any], seed: int = 0,
) -> list[Patient]:
    """Patients with their cohorts and studies (second studies, double flag, missing views)."""
    pool = min(ID_BLOCK - 1, max(5060, 2 * patients))
    numbers = np.sort(rng.choice(pool, size=patients, replace=False) + 1)
    counts = _cohort_counts(patients, positive_fraction)
    cohort_list = [c for c in reversed(COHORTS) for _ in range(counts[c])]
    order = rng.permutation(patients)
    people = [
        Patient(number=seed * ID_BLOCK + int(num), patient_id=seeded_id("P", seed, int(num)),
                cohort=cohort_list[int(order[i])])
        for i, num in enumerate(numbers)
    ]
    for i, p in enumerate(people):
        study = Study(patient_index=i, cohort=p.cohort, extra=False)
        if p.cohort != "normal":
            study.side = "l" if rng.random() < 0.5 else "r"
        p.studies.append(study)

    # A second, normal study for about 10% of patients: one positive patient among them.
    n_two = round_half_up(0.1 * patients)
    if patients >= 5:
        n_two = max(1, n_two)
    positives = [i for i, p in enumerate(people) if p.cohort in ("benign", "cancer")]
    must = [int(rng.choice(positives))] if positives and n_two else []
    for i in sorted(_pick(rng, patients, n_two, must)):
        extra = Study(patient_index=i, cohort="normal", extra=True)
        if rng.random() < 0.5:
            people[i].studies.append(extra)
        else:
            people[i].studies.insert(0, extra)
    extras["two_study_patients"] = sum(len(p.studies) > 1 for p in people)

    # Most severe flag wins: one cancer study whose lesion-side rows also say Benign.
    cancers = [i for i, p in enumerate(people) if p.cohort == "cancer"]
    if cancers:
        chosen = people[int(rng.choice(cancers))]
        next(s for s in chosen.studies if not s.extra).double_flag = True

    studies = [s for p in people for s in p.studies]
    snums = np.sort(rng.choice(min(ID_BLOCK - 1, max(5610, 2 * len(studies))), size=len(studies), replace=False) + 1)
    for s, num in zip(studies, snums):
        s.number = int(num)
        s.study_uid = seeded_id("S", seed, int(num))

    # A few normal studies miss one view.
    normal_studies = [k for k, s in enumerate(studies) if s.cohort == "normal"]
    n_missing = round_half_up(0.05 * patients)
    if patients >= 10:
        n_missing = max(1, n_missing)
    for k in sorted(_pick(rng, len(normal_studies), n_missing)):
        s = studies[normal_studies[k]]
        dropped = VIEWS[int(rng.integers(0, len(VIEWS)))]
        s.views = [v for v in VIEWS if v != dropped]
    extras["missing_view_studies"] = sum(len(s.views) < 4 for s in studies)
    return people


def _volumes(
    rng: np.random.Generator, people: list[Patient], frames: tuple[int, int]
) -> list[Volume]:
    """One volume per view of every study, with its label flags, folders and frame count."""
    volumes: list[Volume] = []
    for p in people:
        for s in p.studies:
            study_folder = f"01-01-2000-{s.study_uid}-{int(rng.integers(10000, 100000)):05d}"
            series_numbers = rng.choice(90000, size=len(s.views), replace=False) + 10000
            for view, series in zip(s.views, series_numbers):
                flagged = s.side is not None and view[0] == s.side
                if not flagged:
                    flags = (1, 0, 0, 0)
                elif s.cohort == "actionable":
                    flags = (0, 1, 0, 0)
                elif s.cohort == "benign":
                    flags = (0, 0, 1, 0)
                else:
                    flags = (0, 0, 1 if s.double_flag else 0, 1)
                volumes.append(Volume(
                    index=len(volumes), patient_id=p.patient_id, patient_number=p.number,
                    study_uid=s.study_uid, view=view, split=p.split,
                    n_frames=int(rng.integers(frames[0], frames[1] + 1)), flags=flags,
                    study_folder=study_folder, series_number=int(series),
                    series_suffix=int(rng.integers(10000, 100000)),
                ))
    return volumes


def _traps(rng: np.random.Generator, volumes: list[Volume]) -> None:
    """Lesion counts and the collection's traps: ``-NA-`` folders, rotation, wrong laterality."""
    # Lesions: one box per positive volume, sometimes two.
    positive = [v.index for v in volumes if v.flags[2] or v.flags[3]]
    for i in positive:
        volumes[i].n_lesions = 2 if rng.random() < 0.2 else 1
    if len(positive) >= 4 and all(volumes[i].n_lesions == 1 for i in positive):
        volumes[int(rng.choice(positive))].n_lesions = 2

    n_vol = len(volumes)
    n_na = max(1 if n_vol >= 8 else 0, round_half_up(0.2 * n_vol))
    for i in _pick(rng, n_vol, n_na, [int(rng.choice(positive))] if positive else []):
        volumes[i].na_drift = True
    n_rot = max(1 if n_vol >= 8 else 0, round_half_up(0.25 * n_vol))
    for i in _pick(rng, n_vol, n_rot, [int(rng.choice(positive))] if positive else []):
        volumes[i].rotated = True
    n_wrong = max(1 if n_vol >= 20 else 0, round_half_up(0.05 * n_vol))
    for i in _pick(rng, n_vol, n_wrong):
        volumes[i].wrong_laterality = True
