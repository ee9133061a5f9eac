"""The leak rule of patient-level splits: no patient (or other key) in more than one split.

Defined here, below the stages, because two layers check it: prepare, when it makes and
audits the splits (:mod:`tasks.prepare.splits`, :mod:`tasks.prepare.outputs`), and
training, when it reads a manifest (:mod:`models.training.manifest_audit`).
"""

from __future__ import annotations

import pandas as pd


class SplitLeakError(ValueError, AssertionError):
    """A patient (or other key) appears in more than one split."""


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
