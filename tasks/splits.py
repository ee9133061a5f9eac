"""Patient-level train/validation/test splits, stratified by each patient's worst cohort.

All of a patient's volumes (and so all of their slices) land in one split: public
classifiers on this data that split by slice or duplicate positives before splitting leak
patients across splits. Stratification is by the patient's most severe cohort among the
volumes used, so the rare benign and cancer patients are spread over the splits instead of
landing wherever chance puts them.

How the split is made: per stratum, the number of patients for each split is apportioned
from the fractions (largest remainder; every split with a non-zero fraction gets at least
one patient of a stratum when the stratum has enough; a stratum smaller than the number
of non-empty splits fills train, then test, then validation); scikit-learn's
:class:`~sklearn.model_selection.GroupShuffleSplit`, grouped by patient, then draws
which patients go where, seeded from ``(seed, stratum)``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from tasks.cohorts import COHORTS

logger = logging.getLogger(__name__)

SPLITS: tuple[str, str, str] = ("train", "validation", "test")
#: Who gets a patient first when a stratum has fewer patients than non-empty splits.
_PRIORITY: tuple[int, ...] = (0, 2, 1)
_SEVERITY = {c: i for i, c in enumerate(COHORTS)}


class SplitLeakError(ValueError, AssertionError):
    """A patient (or other key) appears in more than one split."""


def _check_fractions(fractions: Any) -> tuple[float, float, float]:
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ValueError(f"fractions {fractions!r} must be three numbers (train, validation, test)") from None
    if len(values) != 3 or not all(math.isfinite(f) and f >= 0 for f in values):
        raise ValueError(
            f"fractions {fractions!r} must be three non-negative numbers (train, validation, test)"
        )
    if not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions {fractions!r} sum to {sum(values):g}; they must sum to 1")
    return values  # type: ignore[return-value]


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


def _stratum_seed(seed: int, stratum: str) -> int:
    digest = hashlib.sha256(f"{int(seed)}\x1fsplit\x1f{stratum}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 2  # leaves room for + which, below 2**32


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
    patient's most severe cohort over the used volumes (:func:`patient_strata`). The result
    depends only on the set of patients, their strata, ``fractions`` and ``seed``: not on
    the order of the rows, nor (per stratum) on the other strata.

    Args:
        volumes: From :func:`tasks.cohorts.build_volume_table` (or any table with
            ``patient_id`` and ``cohort``).
        fractions: Shares of (train, validation, test); non-negative, summing to 1; a zero
            leaves that split empty.
        seed: Seeds the draw.

    Returns:
        ``patient_id, split, stratum``, one row per patient, sorted by patient.

    Raises:
        ValueError: Bad fractions, or a table lacking ``patient_id``/``cohort``.
    """
    fractions = _check_fractions(fractions)
    strata = patient_strata(volumes)
    split = np.full(len(strata), "", dtype=object)
    for stratum in sorted(strata["stratum"].unique(), key=_SEVERITY.__getitem__):
        rows = np.flatnonzero(strata["stratum"].to_numpy() == stratum)
        patients = strata["patient_id"].to_numpy()[rows]
        counts = allocate(len(rows), fractions)
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
                # sklearn (and scipy under it) costs 1-3 s to import: only when a split is drawn.
                from sklearn.model_selection import GroupShuffleSplit

                splitter = GroupShuffleSplit(n_splits=1, test_size=k, random_state=rng_seed + which)
                _, taken = next(splitter.split(remaining, groups=patients[remaining]))
                chosen = remaining[taken]
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


def assign_splits(table: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """Add each row's ``split`` (from :func:`split_patients`) by ``patient_id``.

    Raises:
        ValueError: A row's patient has no split (e.g. the splits were made from another
            volume table).
    """
    merged = table.drop(columns=["split"], errors="ignore").merge(
        splits[["patient_id", "split"]], on="patient_id", how="left", validate="many_to_one"
    )
    missing = merged["split"].isna()
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} rows belong to patients without a split (first: "
            f"{merged.loc[missing, 'patient_id'].iloc[0]}); make the splits from the same volume table"
        )
    return merged


def assert_disjoint(table: pd.DataFrame, key: str = "patient_id") -> None:
    """Check that no ``key`` value appears in more than one split.

    Args:
        table: A manifest, plan or volume table with ``split`` and ``key`` columns.
        key: The column that must not cross splits.

    Raises:
        SplitLeakError: (a ValueError and an AssertionError) naming the overlapping values.
        ValueError: A column is missing.
    """
    missing = [c for c in (key, "split") if c not in table.columns]
    if missing:
        raise ValueError(f"assert_disjoint: the table lacks columns {missing}")
    n_splits = table.groupby(key, observed=True)["split"].nunique()
    leaked = sorted(map(str, n_splits.index[n_splits > 1]))
    if leaked:
        raise SplitLeakError(
            f"{len(leaked)} {key} values appear in more than one split: {', '.join(leaked[:20])}"
            f"{' and more' if len(leaked) > 20 else ''}; split by patient (split_patients) and "
            f"assign splits from that table"
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
