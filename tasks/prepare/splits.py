"""Patient-level train/validation/test splits, stratified by label first, then by cohort.

All of a patient's volumes (and so all of their slices) land in one split: public
classifiers on this data that split by slice or duplicate positives before splitting leak
patients across splits. Stratification is by the patient's label first (tumour: the most
severe used cohort is benign or cancer; normal otherwise), so that every split with a
non-zero fraction holds both classes whenever each class has at least as many patients as
there are such splits (three tumour and three normal patients for train / validation /
test); and by the most severe cohort within the label second, so the rare benign and cancer
patients are spread over the splits instead of landing wherever chance puts them.

How the split is made: per label, the number of patients for each split is apportioned
from the fractions (:func:`allocate`: largest remainder; every split with a non-zero
fraction gets at least one patient of the label when the label has enough; fewer patients
than non-empty splits fill train, then test, then validation). Those places are then shared
out among the label's cohorts, most severe first, each cohort apportioned like a label and
cut down to the places left (:func:`cohort_counts`). A seeded permutation of the cohort's
patients (:func:`_draw`, seeded from ``(seed, cohort)``) then draws which go where: the
same draw as scikit-learn's ``GroupShuffleSplit`` grouped by patient, which this replaced,
since the table has one row per patient.

:func:`check_split_classes` tells, before any image is extracted, whether a split would
lack tumour or normal images, with the counts per split and class and what to change.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from tasks.core.split_fractions import check_split_fractions
from tasks.prepare.frame_rules import stable_seed
from tasks.core.schema import COHORT_LABEL, COHORT_SEVERITY, COHORTS, SPLITS
from tasks.core.split_leaks import assert_disjoint

logger = logging.getLogger(__name__)

#: Who gets a patient first when a stratum has fewer patients than non-empty splits.
_PRIORITY: tuple[int, ...] = (0, 2, 1)
_SEVERITY = COHORT_SEVERITY


class SplitClassError(ValueError):
    """A split with a non-zero fraction would hold only one class (tumour or normal).

    Bad input, not a passing fault: raised once, never worth retrying.
    """


def allocate(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """How many of ``n`` patients go to (train, validation, test).

    Each split with a non-zero fraction gets at least one patient when ``n`` allows (so two
    cancer patients are not both in train when there is a test split); fewer patients than
    non-empty splits go to train, then test, then validation. The rest follows the fractions
    by largest remainder, ties going to train, then test, then validation.

    Args:
        n: Patients in the stratum.
        fractions: Validated fractions summing to 1.

    Returns:
        Counts per split, summing to ``n``.
    """
    nonempty = [i for i in _PRIORITY if fractions[i] > 0]
    counts = [0, 0, 0]
    if n <= len(nonempty):
        for i in nonempty[:n]:
            counts[i] = 1
        return counts[0], counts[1], counts[2]
    quota = [f * n for f in fractions]
    counts = [max(1, math.floor(q)) if fractions[i] > 0 else 0 for i, q in enumerate(quota)]
    rank = {i: r for r, i in enumerate(_PRIORITY)}
    while sum(counts) < n:
        i = max(nonempty, key=lambda j: (quota[j] - counts[j], -rank[j]))
        counts[i] += 1
    while sum(counts) > n:
        i = min((j for j in nonempty if counts[j] > 1), key=lambda j: (quota[j] - counts[j], -rank[j]))
        counts[i] -= 1
    return counts[0], counts[1], counts[2]


def cohort_counts(
    sizes: dict[str, int], fractions: tuple[float, float, float]
) -> dict[str, tuple[int, int, int]]:
    """Share one label's places in each split among its cohorts.

    The label's places per split come from :func:`allocate` over all its patients, so both
    classes reach every non-empty split whenever they can. The cohorts are served most
    severe first: each asks for its own :func:`allocate` share, cut to the places left, and
    what the cut leaves over goes to the splits with the most room (ties: train, test,
    validation). The last cohort takes exactly the places left.

    Args:
        sizes: Patients per cohort of one label, e.g. ``{"benign": 2, "cancer": 2}``.
        fractions: Validated fractions summing to 1.

    Returns:
        Counts per split ``(train, validation, test)`` for each cohort; per split they sum
        to the label's :func:`allocate` counts.
    """
    room = list(allocate(sum(sizes.values()), fractions))
    rank = {i: r for r, i in enumerate(_PRIORITY)}
    out: dict[str, tuple[int, int, int]] = {}
    for cohort in sorted(sizes, key=lambda c: -_SEVERITY[c]):
        n = sizes[cohort]
        counts = [min(want, free) for want, free in zip(allocate(n, fractions), room)]
        while sum(counts) < n:
            i = max((j for j in range(3) if room[j] > counts[j]), key=lambda j: (room[j] - counts[j], -rank[j]))
            counts[i] += 1
        room = [free - c for free, c in zip(room, counts)]
        out[cohort] = (counts[0], counts[1], counts[2])
    return out


def _stratum_seed(seed: int, stratum: str) -> int:
    """The seed of one stratum's draw: :func:`~tasks.prepare.frame_rules.stable_seed`'s top 30 bits.

    (Below 2**30, leaving room for ``+ which`` under 2**32, as ``RandomState`` needs.)
    """
    return stable_seed(seed, "split", stratum) >> 34


def _draw(n: int, k: int, seed: int) -> np.ndarray:
    """``k`` of the positions ``0..n-1``, sorted: the first ``k`` of a seeded permutation.

    Exactly what ``GroupShuffleSplit(n_splits=1, test_size=k, random_state=seed)`` returns as
    its test set over ``n`` rows of distinct, sorted groups (one row per patient, sorted by
    patient): its legacy ``RandomState`` permutation of the groups, first ``k`` taken.
    """
    return np.sort(np.random.RandomState(seed).permutation(n)[:k])


def patient_strata(volumes: pd.DataFrame) -> pd.DataFrame:
    """Each patient's most severe cohort over the volumes used.

    Args:
        volumes: Needs ``patient_id`` and ``cohort``; when ``excluded_reason`` is present only
            rows where it is null count, and when ``label`` is present only 0/1 rows.

    Returns:
        ``patient_id, stratum``, sorted by patient.
    """
    missing = [c for c in ("patient_id", "cohort") if c not in volumes.columns]
    if missing:
        raise ValueError(f"split_patients: the volume table lacks columns {missing}")
    used = volumes
    if "excluded_reason" in used.columns:
        used = used.loc[used["excluded_reason"].isna()]
    if "label" in used.columns:
        used = used.loc[used["label"].isin((0, 1))]
    bad = ~used["cohort"].isin(COHORTS)
    if bad.any():
        raise ValueError(
            f"split_patients: cohort {used['cohort'][bad].iloc[0]!r} (patient "
            f"{used['patient_id'][bad].iloc[0]}) is not one of {', '.join(COHORTS)}"
        )
    severity = used["cohort"].map(_SEVERITY).astype("int64")
    worst = severity.groupby(used["patient_id"].astype(str)).max().sort_index()
    return pd.DataFrame({
        "patient_id": pd.Series(worst.index, dtype="str"),
        "stratum": pd.Series([COHORTS[s] for s in worst.to_numpy()], dtype="str"),
    })


def split_patients(
    volumes: pd.DataFrame,
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> pd.DataFrame:
    """Assign every patient with a used volume to train, validation or test.

    The split is by patient (no patient is ever in two splits) and stratified by the
    patient's label first and their most severe cohort over the used volumes second
    (:func:`patient_strata`, :func:`cohort_counts`): every split with a non-zero fraction
    gets tumour and normal patients whenever each label has at least as many patients as
    there are such splits. The result depends only on the set of patients, their strata,
    ``fractions`` and ``seed``: not on the order of the rows, nor on the other label's
    patients.

    Args:
        volumes: From :func:`tasks.prepare.cohorts.build_volume_table` (or any table with
            ``patient_id`` and ``cohort``).
        fractions: Shares of (train, validation, test); non-negative, summing to 1; a zero
            leaves that split empty.
        seed: Seeds the draw.

    Returns:
        ``patient_id, split, stratum``, one row per patient, sorted by patient.

    Raises:
        ValueError: Bad fractions, or a table lacking ``patient_id``/``cohort``.
    """
    fractions = check_split_fractions(fractions)
    strata = patient_strata(volumes)
    split = np.full(len(strata), "", dtype=object)
    sizes = strata["stratum"].value_counts()
    planned: dict[str, tuple[int, int, int]] = {}
    for label in (1, 0):
        of_label = {str(c): int(n) for c, n in sizes.items() if COHORT_LABEL[str(c)] == label}
        planned.update(cohort_counts(of_label, fractions) if of_label else {})
    for stratum in sorted(strata["stratum"].unique(), key=_SEVERITY.__getitem__):
        rows = np.flatnonzero(strata["stratum"].to_numpy() == stratum)
        counts = planned[stratum]
        rng_seed = _stratum_seed(seed, stratum)
        remaining = np.arange(len(rows))
        # Carve test, then validation out of the stratum; what is left is train.
        for which in (2, 1):
            k = counts[which]
            if k == 0:
                continue
            if k == len(remaining):
                chosen = remaining
            else:
                chosen = remaining[_draw(len(remaining), k, rng_seed + which)]
            split[rows[chosen]] = SPLITS[which]
            remaining = np.setdiff1d(remaining, chosen)
        split[rows[remaining]] = SPLITS[0]
        logger.info(
            "Split %d %s patients: %s", len(rows), stratum,
            dict(zip(SPLITS, (int((split[rows] == s).sum()) for s in SPLITS))),
        )
    out = strata.assign(split=pd.Series(split, dtype="str"))[["patient_id", "split", "stratum"]]
    assert_disjoint(out)
    return out


_CLASSES: tuple[tuple[int, str], ...] = ((1, "tumour"), (0, "normal"))


def split_class_counts(plan: pd.DataFrame, splits: pd.DataFrame) -> dict[str, dict[str, dict[str, int]]]:
    """Planned volumes and patients per split and class.

    Args:
        plan: The slice plan (:func:`tasks.prepare.slices.select_slices`): ``patient_id`` and
            ``label`` per volume to extract.
        splits: :func:`split_patients`' table.

    Returns:
        ``{split: {"tumour" | "normal": {"volumes": n, "patients": n}}}`` for every split.
    """
    missing = [c for c in ("patient_id", "label") if c not in plan.columns]
    if missing:
        raise ValueError(f"check_split_classes: the slice plan lacks columns {missing}")
    table = plan[["patient_id", "label"]].merge(splits[["patient_id", "split"]], on="patient_id", how="inner")
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for split in SPLITS:
        part = table.loc[table["split"] == split]
        counts[split] = {
            name: {"volumes": int((part["label"] == label).sum()),
                   "patients": int(part.loc[part["label"] == label, "patient_id"].nunique())}
            for label, name in _CLASSES
        }
    return counts


def check_split_classes(
    plan: pd.DataFrame, splits: pd.DataFrame, *, fractions: tuple[float, float, float]
) -> dict[str, dict[str, dict[str, int]]]:
    """Stop before extraction when a split with a non-zero fraction would lack a class.

    A classifier cannot train without both classes in train and validation, and a test
    split of one class has no ROC AUC, sensitivity or specificity; finding out after the
    extraction (or at the end of training) wastes the run. :func:`split_patients` gives
    both classes to every such split whenever each label has enough patients, so this
    fails only for data too small for the configured split.

    Args:
        plan: The slice plan (``patient_id``, ``label`` per volume).
        splits: :func:`split_patients`' table (``patient_id``, ``split``, ``stratum``).
        fractions: The configured ``(train, validation, test)`` fractions.

    Returns:
        :func:`split_class_counts`, when every split with a non-zero fraction holds both.

    Raises:
        SplitClassError: (a ValueError) naming the counts per split and class and what to change.
    """
    fractions = check_split_fractions(fractions)
    counts = split_class_counts(plan, splits)
    used = [split for split, f in zip(SPLITS, fractions) if f > 0]
    lacking = [(split, name) for split in used for _, name in _CLASSES if counts[split][name]["volumes"] == 0]
    if not lacking:
        return counts
    per_label = {name: int((splits["stratum"].map(COHORT_LABEL) == label).sum()) for label, name in _CLASSES}
    table = "; ".join(
        f"{split}: " + ", ".join(f"{counts[split][name]['volumes']} {name} volumes "
                                 f"({counts[split][name]['patients']} patients)" for _, name in _CLASSES)
        for split in used
    )
    missing = ", ".join(f"{split} has no {name}" for split, name in lacking)
    shares = ", ".join(f"{f:g}" for f in fractions)
    raise SplitClassError(
        f"the data cannot give both classes (tumour and normal) to every split: {missing}. Planned volumes "
        f"per split and class: {table}. The data has {per_label['tumour']} patients with a tumour and "
        f"{per_label['normal']} without; split_fractions ({shares}) have {len(used)} non-empty splits, which "
        f"need at least {len(used)} patients of each class. Add patients of the missing class (synthetic data: "
        f"tomoflow synth --patients 12 or more, or a larger --positive-fraction), or leave a split out with "
        f"slices.split_fractions (e.g. (0.8, 0.2, 0.0) needs 2 of each; evaluate then on the validation split). "
        f"Nothing was extracted."
    )


def split_audit(table: pd.DataFrame, *, key: str = "patient_id") -> dict[str, Any]:
    """Patients and rows per split and cohort, and the overlap count (which must be 0).

    Args:
        table: A manifest, plan or volume table with ``patient_id`` and ``split``; counted by
            ``cohort`` when present, else by ``stratum``, and by ``label`` when present.
        key: The patient column.

    Returns:
        A JSON-able dict: ``{"splits": {split: {"patients", "rows", "by_cohort": {cohort:
        {"patients", "rows"}}, "by_label": {...}}}, "patients", "rows", "overlap_patients"}``.
    """
    missing = [c for c in (key, "split") if c not in table.columns]
    if missing:
        raise ValueError(f"split_audit: the table lacks columns {missing}")
    group = "cohort" if "cohort" in table.columns else ("stratum" if "stratum" in table.columns else None)
    n_splits = table.groupby(key, observed=True)["split"].nunique()
    audit: dict[str, Any] = {
        "patients": int(table[key].nunique()),
        "rows": int(len(table)),
        "overlap_patients": int((n_splits > 1).sum()),
        "splits": {},
    }
    for name in [*SPLITS, *sorted(set(map(str, table["split"].dropna().unique())) - set(SPLITS))]:
        part = table.loc[table["split"] == name]
        entry: dict[str, Any] = {"patients": int(part[key].nunique()), "rows": int(len(part))}
        for column, label in ((group, "by_cohort"), ("label" if "label" in table.columns else None, "by_label")):
            if column is None:
                continue
            entry[label] = {
                str(value): {"patients": int(sub[key].nunique()), "rows": int(len(sub))}
                for value, sub in part.groupby(column, observed=True, sort=True)
            }
        audit["splits"][name] = entry
    return audit
