"""Read the BCS-DBT CSVs and turn their labels into cohorts and a per-volume table.

Reading the CSVs lives in :mod:`tasks.prepare.bcs_csv`, the accounting of rejected volumes in
:mod:`tasks.prepare.rejects`. This module builds one row per volume with its cohort, its
binary label and, for volumes that cannot be used, the reason they are excluded. Excluded
volumes are kept (not dropped) so that every count can be audited.

Cohort sources are pluggable: :func:`cohorts_from_labels` makes one from the labels CSV,
a later stage may make another from radiology reports (same columns,
``cohort_source="reports"``), and :func:`combine_cohorts` merges them with the labels
winning and the disagreements counted.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

from tasks.prepare.bcs_csv import FILE_PATH_COLUMNS, LABEL_COLUMNS
from tasks.core.schema import COHORT_LABEL, COHORTS, VOLUME_KEY

logger = logging.getLogger(__name__)

KEY: list[str] = list(VOLUME_KEY)

COHORT_COLUMNS: list[str] = [*KEY, "cohort", "label", "cohort_source", "n_flags"]
#: Columns of the label rejects (rows of the labels CSV that give no cohort).
LABEL_REJECT_COLUMNS: list[str] = [*KEY, "reason"]
VOLUME_COLUMNS: list[str] = [
    *KEY, "descriptive_path", "classic_path", "cohort", "label", "cohort_source", "n_boxes",
    "excluded_reason",
]


# --------------------------------------------------------------------------- cohorts


def _key_strings(frame: pd.DataFrame) -> list[str]:
    return frame[KEY].astype(str).agg("/".join, axis=1).tolist()


def _label_for(cohorts: pd.Series) -> pd.Series:
    return cohorts.map(COHORT_LABEL).astype("Int8")


def cohorts_from_labels(labels: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One cohort per volume from the labels table.

    A row with several flags gets the most severe one (cancer > benign > actionable >
    normal) and the volumes concerned are logged in one warning; a row with no flag is
    rejected rather than guessed.

    Args:
        labels: :attr:`BcsTables.labels` (``patient_id, study_uid, view`` and the four 0/1
            flag columns).

    Returns:
        ``(cohorts, rejects)``. ``cohorts`` has :data:`COHORT_COLUMNS`: ``cohort`` (one of
        :data:`COHORTS`), ``label`` (Int8: 1 benign/cancer, 0 normal, <NA> actionable),
        ``cohort_source`` (``"labels"``) and ``n_flags``. ``rejects`` has ``patient_id,
        study_uid, view, reason`` (reason ``"no-flag"``). Both are sorted by volume.

    Raises:
        ValueError: A required column is missing or a volume appears twice.
    """
    missing = [c for c in LABEL_COLUMNS if c not in labels.columns]
    if missing:
        raise ValueError(f"labels table: missing columns {missing}; pass BcsTables.labels")
    duplicated = labels.duplicated(subset=KEY)
    if duplicated.any():
        raise ValueError(
            f"labels table: {int(duplicated.sum())} volumes appear twice "
            f"(first: {_key_strings(labels.loc[duplicated])[0]}); de-duplicate it first "
            f"(load_bcs_tables does)"
        )
    labels = labels.sort_values(KEY, kind="stable").reset_index(drop=True)
    flags = labels[list(COHORTS)].astype("int64").to_numpy()
    n_flags = flags.sum(axis=1)
    # The most severe flagged cohort: the highest column index holding a 1.
    worst = np.where(n_flags > 0, len(COHORTS) - 1 - np.argmax(flags[:, ::-1], axis=1), -1)

    multi = n_flags > 1
    if multi.any():
        details = [
            f"{key} ({'+'.join(c for c, f in zip(COHORTS, row) if f)} -> {COHORTS[w]})"
            for key, row, w in zip(_key_strings(labels.loc[multi]), flags[multi], worst[multi])
        ]
        logger.warning(
            "%d label rows have more than one flag; the most severe wins: %s%s",
            len(details), ", ".join(details[:50]),
            f" and {len(details) - 50} more" if len(details) > 50 else "",
        )

    none = n_flags == 0
    rejects = labels.loc[none, KEY].assign(reason="no-flag").reset_index(drop=True)
    if none.any():
        logger.warning(
            "%d label rows have no flag set and are rejected: %s", int(none.sum()),
            ", ".join(_key_strings(rejects)[:50]),
        )

    kept = labels.loc[~none, KEY].reset_index(drop=True)
    cohort = pd.Series([COHORTS[w] for w in worst[~none]], dtype="str")
    kept["cohort"] = cohort
    kept["label"] = _label_for(cohort)
    kept["cohort_source"] = "labels"
    kept["n_flags"] = n_flags[~none].astype("int64")
    return kept[COHORT_COLUMNS], rejects[LABEL_REJECT_COLUMNS]


def cohorts_from_reports(studies: pd.DataFrame, file_paths: pd.DataFrame) -> pd.DataFrame:
    """Per-volume cohorts from report-derived study cohorts (:func:`tasks.prepare.radiology_reports.study_cohorts`).

    A study's cohort applies to its volumes (the views the file-paths table lists for it).
    Where the deciding pathology names one side (``side`` ``L``/``R``), only that side's
    views take the cohort and the other side's views are ``normal``: a cancer in the left
    breast does not make the right breast a tumour.

    Args:
        studies: ``patient_id, study_uid, cohort, side`` per study.
        file_paths: :attr:`BcsTables.file_paths` (which views each study has).

    Returns:
        A cohort source with :data:`COHORT_COLUMNS` and ``cohort_source="reports"``.
    """
    missing = [c for c in ("patient_id", "study_uid", "cohort", "side") if c not in studies.columns]
    if missing:
        raise ValueError(f"report study cohorts: missing columns {missing}")
    views = file_paths[KEY].astype(str).drop_duplicates()
    merged = views.merge(studies.astype({"patient_id": str, "study_uid": str}),
                         on=["patient_id", "study_uid"], how="inner")
    side = merged["side"].astype("object")
    other_side = side.notna() & (merged["view"].str[0].str.upper() != side.fillna(""))
    cohort = merged["cohort"].astype(str).where(~other_side, "normal")
    out = merged[KEY].copy()
    out["cohort"] = cohort.to_numpy()
    out["label"] = _label_for(out["cohort"])
    out["cohort_source"] = "reports"
    out["n_flags"] = pd.array([pd.NA] * len(out), dtype="Int64")
    return out[COHORT_COLUMNS].sort_values(KEY, kind="stable").reset_index(drop=True)


def _source_name(i: int, source: pd.DataFrame) -> str | None:
    """The ``cohort_source`` name of source ``i`` after checking it (None: the source is empty)."""
    missing = [c for c in (*KEY, "cohort", "cohort_source") if c not in source.columns]
    if missing:
        raise ValueError(f"cohort source #{i}: missing columns {missing}; expected {COHORT_COLUMNS}")
    names = source["cohort_source"].dropna().unique().tolist()
    if len(names) > 1:
        raise ValueError(f"cohort source #{i}: several cohort_source values {names}; pass one table per source")
    bad = ~source["cohort"].isin(COHORTS)
    if bad.any():
        raise ValueError(
            f"cohort source #{i} ({names}): cohort {source['cohort'][bad].iloc[0]!r} at "
            f"{_key_strings(source.loc[bad])[0]}; expected one of {', '.join(COHORTS)}"
        )
    if source.duplicated(subset=KEY).any():
        raise ValueError(f"cohort source #{i} ({names}): a volume appears twice; one row per volume")
    if source.empty:
        return None
    return names[0] if names else f"source{i}"


def combine_cohorts(sources: Sequence[pd.DataFrame]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Merge cohort sources (labels, reports, ...) into one cohort per volume.

    Each source is a table with :data:`COHORT_COLUMNS` (``n_flags`` optional) and one
    ``cohort_source`` value. Where sources disagree, ``labels`` wins, then the sources in
    the order given; every disagreement is counted by kind. A volume present in only one
    source takes that source's cohort.

    Args:
        sources: The cohort tables, e.g. ``[from_labels, from_reports]``.

    Returns:
        ``(cohorts, disagreements)``: ``cohorts`` has :data:`COHORT_COLUMNS` plus
        ``sources`` (the sources that had the volume, joined by ``+``), sorted by volume;
        ``disagreements`` maps ``"labels=normal,reports=cancer"`` (winner first) to a count.

    Raises:
        ValueError: No source, a source lacks a column, has no or several
            ``cohort_source`` values, an unknown cohort, or a volume twice.
    """
    if not sources:
        raise ValueError("combine_cohorts: no cohort source given; pass at least the labels cohorts")
    prepared = [(name, source) for i, source in enumerate(sources)
                if (name := _source_name(i, source)) is not None]
    order = sorted(range(len(prepared)), key=lambda i: (prepared[i][0] != "labels", i))
    prepared = [prepared[i] for i in order]
    if not prepared:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in [*COHORT_COLUMNS, "sources"]}), {}

    merged = None
    for rank, (name, source) in enumerate(prepared):
        part = source[KEY].copy()
        part[f"cohort_{rank}"] = source["cohort"].astype("object").to_numpy()
        n_flags = source["n_flags"] if "n_flags" in source.columns else pd.Series(pd.NA, index=source.index)
        part[f"n_flags_{rank}"] = n_flags.astype("Int64").to_numpy()
        merged = part if merged is None else merged.merge(part, on=KEY, how="outer")
    assert merged is not None
    merged = merged.sort_values(KEY, kind="stable").reset_index(drop=True)

    names = [name for name, _ in prepared]
    cohort_cols = [f"cohort_{rank}" for rank in range(len(prepared))]
    present = merged[cohort_cols].notna().to_numpy()
    values = merged[cohort_cols].astype("object").to_numpy()
    winner = present.argmax(axis=1)  # first source (labels first) that has the volume
    rows = np.arange(len(merged))
    chosen = values[rows, winner]

    disagreements: dict[str, int] = {}
    for i, name in enumerate(names):
        differs = present[:, i] & (winner != i) & (values[:, i] != chosen)
        for win, win_value, value in zip(winner[differs], chosen[differs], values[differs, i]):
            kind = f"{names[win]}={win_value},{name}={value}"
            disagreements[kind] = disagreements.get(kind, 0) + 1
    if disagreements:
        logger.warning("Cohort sources disagree (the first named wins): %s", disagreements)

    n_flags = merged[[f"n_flags_{rank}" for rank in range(len(prepared))]].to_numpy(dtype="object")
    combined = merged[KEY].copy()
    combined["cohort"] = pd.Series(chosen, dtype="str")
    combined["label"] = _label_for(combined["cohort"])
    combined["cohort_source"] = pd.Series([names[w] for w in winner], dtype="str")
    combined["n_flags"] = pd.array(n_flags[rows, winner], dtype="Int64")
    combined["sources"] = pd.Series(["+".join(n for n, p in zip(names, row) if p) for row in present], dtype="str")
    return combined[[*COHORT_COLUMNS, "sources"]], dict(sorted(disagreements.items()))


# --------------------------------------------------------------------------- volume table


def build_volume_table(
    file_paths: pd.DataFrame,
    cohorts: pd.DataFrame,
    boxes: pd.DataFrame,
    *,
    cohort_rejects: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per volume with its paths, cohort, label and exclusion reason.

    Every volume from the file-paths table and from the cohort table is kept;
    ``excluded_reason`` says why a volume is not used (null when it is used):

    - ``"no-file-path"``: has a cohort but no row in the file-paths CSV (no image);
    - ``"no-label"``: has no label row;
    - the rejection reason from ``cohort_rejects`` (e.g. ``"no-flag"``);
    - ``"actionable"``: actionable volumes (neither normal nor tumour).

    Args:
        file_paths: :attr:`BcsTables.file_paths`.
        cohorts: From :func:`cohorts_from_labels` or :func:`combine_cohorts`.
        boxes: :attr:`BcsTables.boxes`; counted per volume into ``n_boxes``.
        cohort_rejects: The rejects from :func:`cohorts_from_labels`, so their reason shows
            instead of ``"no-label"``.

    Returns:
        :data:`VOLUME_COLUMNS` (``label`` Int8 with <NA> where unused, ``n_boxes`` int),
        plus ``csv_split`` when the file-paths table has it, sorted by volume.

    Raises:
        ValueError: A table lacks a column or repeats a volume.
    """
    for name, table, columns in (
        ("file_paths", file_paths, FILE_PATH_COLUMNS),
        ("cohorts", cohorts, [*KEY, "cohort", "cohort_source"]),
        ("boxes", boxes, KEY),
    ):
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise ValueError(f"build_volume_table: {name} lacks columns {missing}")
    for name, table in (("file_paths", file_paths), ("cohorts", cohorts)):
        if table.duplicated(subset=KEY).any():
            raise ValueError(
                f"build_volume_table: {name} repeats volume "
                f"{_key_strings(table.loc[table.duplicated(subset=KEY)])[0]}; de-duplicate it first"
            )

    path_columns = [*FILE_PATH_COLUMNS, *(["csv_split"] if "csv_split" in file_paths.columns else [])]
    paths = file_paths[path_columns].assign(_has_path=True)
    labelled = cohorts[[*KEY, "cohort", "cohort_source"]].assign(_has_cohort=True)
    table = paths.merge(labelled, on=KEY, how="outer")
    if cohort_rejects is not None and len(cohort_rejects):
        rejected = cohort_rejects[[*KEY, "reason"]].drop_duplicates(subset=KEY)
        table = table.merge(rejected.rename(columns={"reason": "_rejected"}), on=KEY, how="left")
    else:
        table["_rejected"] = pd.NA

    counts = boxes.groupby(KEY, observed=True).size().rename("n_boxes").reset_index()
    table = table.merge(counts, on=KEY, how="left")
    table["n_boxes"] = table["n_boxes"].fillna(0).astype("int64")

    has_path = table["_has_path"].eq(True)
    has_cohort = table["_has_cohort"].eq(True)
    reason = pd.Series(pd.NA, index=table.index, dtype="str")
    reason = reason.mask(table["cohort"].eq("actionable").fillna(False), "actionable")
    reason = reason.mask(~has_cohort, "no-label")
    rejected = table["_rejected"].notna() & ~has_cohort
    reason = reason.mask(rejected, table["_rejected"].astype("str"))
    reason = reason.mask(~has_path, "no-file-path")
    table["excluded_reason"] = reason
    table["label"] = _label_for(table["cohort"])

    orphans = table["n_boxes"].gt(0) & ~table["cohort"].isin(("benign", "cancer"))
    if orphans.any():
        logger.warning(
            "%d volumes have boxes but are not labelled benign or cancer (boxes unused): %s",
            int(orphans.sum()), ", ".join(_key_strings(table.loc[orphans])[:20]),
        )
    columns = [*VOLUME_COLUMNS, *(["csv_split"] if "csv_split" in table.columns else [])]
    return table.sort_values(KEY, kind="stable").reset_index(drop=True)[columns]


def _count(series: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in series.value_counts(dropna=False).sort_index().items()}


def volume_counts(volumes: pd.DataFrame) -> dict[str, object]:
    """Counts for the audit trail: volumes and patients per cohort, exclusions per reason.

    Args:
        volumes: From :func:`build_volume_table`.

    Returns:
        A JSON-able dict: ``volumes``, ``patients``, ``included_volumes``,
        ``included_patients``, ``by_cohort`` (all volumes; ``"none"`` for no cohort),
        ``included_by_cohort``, ``included_patients_by_cohort``, ``excluded`` (reason ->
        volumes) and ``positives_without_boxes`` (included benign/cancer volumes with no box).
    """
    included = volumes["excluded_reason"].isna()
    inc = volumes.loc[included]
    by_cohort = volumes["cohort"].astype("object").where(volumes["cohort"].notna(), "none")
    positives = inc["cohort"].isin(("benign", "cancer"))
    return {
        "volumes": int(len(volumes)),
        "patients": int(volumes["patient_id"].nunique()),
        "included_volumes": int(included.sum()),
        "included_patients": int(inc["patient_id"].nunique()),
        "by_cohort": _count(by_cohort),
        "included_by_cohort": _count(inc["cohort"]),
        "included_patients_by_cohort": {
            str(c): int(n) for c, n in inc.groupby("cohort", observed=True)["patient_id"].nunique().items()
        },
        "excluded": _count(volumes.loc[~included, "excluded_reason"]),
        "positives_without_boxes": int((positives & inc["n_boxes"].eq(0)).sum()),
    }


def no_report_reasons(volumes: pd.DataFrame) -> pd.DataFrame:
    """With cohorts from reports alone, ``no-label`` volumes become ``no-report`` (by design).

    Without a labels CSV the kept reports define the study population, so a volume whose
    study has no kept report is outside it, as a view the strategy did not select is; with a
    labels CSV, a volume without a label row stays a fault (``no-label``).
    """
    reason = volumes["excluded_reason"]
    no_label = reason.astype("object").eq("no-label").fillna(False).astype(bool)
    return volumes.assign(excluded_reason=reason.mask(no_label, "no-report"))
