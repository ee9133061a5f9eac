"""Decide which frames of which volumes to extract: the slice plan.

:func:`select_slices` makes one plan row per volume with a :class:`~tasks.prepare.frame_rules.FrameRule`
(stored as its text in ``frames_rule``); a rule is resolved to frame indices only by the
extractor, once it has read the volume's frame count (:func:`~tasks.prepare.frame_rules.resolve_frames`).
Finding the volume's file on disk lives in :mod:`tasks.prepare.locate`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from tasks.core.config import SlicesConfig
from tasks.prepare.frame_rules import FrameRule, stable_seed, volume_key
from tasks.core.schema import VOLUME_KEY, Strategy

logger = logging.getLogger(__name__)

KEY: list[str] = list(VOLUME_KEY)

#: Columns of :func:`select_slices`' plan, before the volume table's other columns.
PLAN_COLUMNS: list[str] = [*KEY, "cohort", "label", "frames_rule", "n_boxes", "boxes"]

#: Fields of each box in the plan's ``boxes`` JSON.
BOX_FIELDS: tuple[str, ...] = ("slice", "x", "y", "width", "height", "box_class", "ad", "volume_slices")


def box_records(boxes_for_volume: Any) -> list[dict[str, Any]]:
    """A volume's boxes as dicts, from a plan row's ``boxes`` JSON (empty or null: none), a
    list of dicts or a DataFrame."""
    if boxes_for_volume is None or (isinstance(boxes_for_volume, float) and np.isnan(boxes_for_volume)):
        return []
    if isinstance(boxes_for_volume, str):
        return list(json.loads(boxes_for_volume)) if boxes_for_volume else []
    if isinstance(boxes_for_volume, pd.DataFrame):
        return boxes_for_volume.to_dict("records")
    return [dict(b) for b in boxes_for_volume]


def frame_boxes(boxes_for_volume: Any, frame: int, lesion_window: int) -> list[dict[str, Any]]:
    """The boxes that apply to ``frame``: those whose ``slice`` is within ``lesion_window``.

    Args:
        boxes_for_volume: A plan row's ``boxes`` (JSON text), a list of box dicts, or a
            DataFrame of the volume's boxes; each box needs ``slice``.
        frame: 0-based frame index.
        lesion_window: A box applies to frames ``slice - lesion_window .. slice + lesion_window``.

    Returns:
        The applicable boxes (dicts with ``x, y, width, height`` and the other fields), in
        the order given.
    """
    if lesion_window < 0:
        raise ValueError(f"lesion_window must be >= 0, got {lesion_window}")
    return [b for b in box_records(boxes_for_volume) if abs(int(frame) - int(b["slice"])) <= lesion_window]


# --------------------------------------------------------------------------- selection


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _boxes_by_volume(boxes: pd.DataFrame) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    missing = [c for c in (*KEY, "slice") if c not in boxes.columns]
    if missing:
        raise ValueError(f"select_slices: the boxes table lacks columns {missing}; pass BcsTables.boxes")
    fields = [f for f in BOX_FIELDS if f in boxes.columns]
    order = [*KEY, *(f for f in ("slice", "x", "y", "width", "height") if f in fields)]
    ordered = boxes.sort_values(order, kind="stable")
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in ordered[[*KEY, *fields]].itertuples(index=False, name=None):
        key = (str(row[0]), str(row[1]), str(row[2]))
        grouped.setdefault(key, []).append({f: _plain(v) for f, v in zip(fields, row[3:])})
    return grouped


def lesion_frames(boxes_for_volume: Any, lesion_window: int) -> list[int]:
    """Frames within ``lesion_window`` of any box's ``slice``, clipped to ``0..volume_slices-1``.

    Where a box has no ``volume_slices`` only the lower bound is clipped; the extractor's
    :func:`resolve_frames` then rejects frames beyond the file's frame count.
    """
    frames: set[int] = set()
    for box in box_records(boxes_for_volume):
        centre = int(box["slice"])
        last = box.get("volume_slices")
        high = centre + lesion_window if last is None else min(centre + lesion_window, int(last) - 1)
        frames.update(range(max(0, centre - lesion_window), high + 1))
    return sorted(frames)


def _volume_rules(
    keys: list[tuple[str, str, str]], label: np.ndarray, by_volume: dict[tuple[str, str, str], list[dict[str, Any]]],
    *, strategy: Strategy, normal_rule: FrameRule, lesion_window: int,
) -> list[FrameRule | None]:
    """Each used volume's rule under ``strategy`` (None: not planned, or chosen later for single-slice)."""
    rules: list[FrameRule | None] = []
    unboxed: list[str] = []
    for key, y in zip(keys, label):
        vol_boxes = by_volume.get(key, [])
        if y == 0:
            rules.append(None if strategy == "single-slice" else normal_rule)
        elif strategy == "all-slices":
            rules.append(FrameRule.all())
        elif not vol_boxes:
            unboxed.append(volume_key(*key))
            rules.append(None)
        elif strategy == "single-slice":
            rules.append(None)  # one volume per positive patient, chosen below
        elif any(b.get("volume_slices") is None for b in vol_boxes):
            # The CSV lacks VolumeSlices: clip the window to the file's frame count at extraction.
            centres = [int(b["slice"]) for b in sorted(vol_boxes, key=lambda b: int(b["slice"]))]
            rules.append(FrameRule.lesion(lesion_window, centres))
        else:
            rules.append(FrameRule.exact(lesion_frames(vol_boxes, lesion_window)))
    if unboxed:
        logger.warning(
            "%s: %d benign/cancer volumes have no box and are left out: %s%s", strategy,
            len(unboxed), ", ".join(unboxed[:50]), f" and {len(unboxed) - 50} more" if len(unboxed) > 50 else "",
        )
    return rules


def _single_slice_rules(
    rules: list[FrameRule | None], keys: list[tuple[str, str, str]], label: np.ndarray,
    by_volume: dict[tuple[str, str, str], list[dict[str, Any]]], *, seed: int,
) -> None:
    """Fill in single-slice's one image per patient (method 2), in place."""
    # The largest lesion of each positive patient.
    largest: dict[str, tuple[float, int, int]] = {}
    for i, (key, y) in enumerate(zip(keys, label)):
        if y != 1:
            continue
        for box in by_volume.get(key, []):
            area = float(box.get("width") or 0) * float(box.get("height") or 0)
            # Rows and boxes are sorted, so a strict ">" keeps the first of equal boxes.
            if key[0] not in largest or area > largest[key[0]][0]:
                largest[key[0]] = (area, i, int(box["slice"]))
    for _, i, frame in largest.values():
        rules[i] = FrameRule.exact([frame])
    positive_patients = {k[0] for k, y in zip(keys, label) if y == 1}
    normal_rows: dict[str, list[int]] = {}
    for i, (key, y) in enumerate(zip(keys, label)):
        if y == 0 and key[0] not in positive_patients:
            normal_rows.setdefault(key[0], []).append(i)
    for patient, rows in normal_rows.items():
        # rows are sorted by (study_uid, view); the pick depends only on (seed, patient).
        pick = rows[stable_seed(seed, "single-slice", patient) % len(rows)]
        rules[pick] = FrameRule.pick(1)


def _with_rules(
    used: pd.DataFrame, rules: list[FrameRule | None], by_volume: dict[tuple[str, str, str], list[dict[str, Any]]],
) -> pd.DataFrame:
    """The planned volumes (a rule given) with ``frames_rule`` text, ``n_boxes`` and ``boxes`` JSON."""
    plan = used.copy()
    plan["frames_rule"] = pd.Series([None if r is None else str(r) for r in rules], dtype="object")
    plan = plan.loc[plan["frames_rule"].notna()].reset_index(drop=True)
    plan["frames_rule"] = plan["frames_rule"].astype("str")
    plan["label"] = plan["label"].astype("int8")
    records = [by_volume.get(k, []) if y == 1 else [] for k, y in zip(
        plan[KEY].astype(str).itertuples(index=False, name=None), plan["label"])]
    plan["n_boxes"] = pd.Series([len(r) for r in records], dtype="int64")
    plan["boxes"] = pd.Series(
        [json.dumps(r, sort_keys=True, separators=(",", ":")) for r in records], dtype="str"
    )
    return plan


def select_slices(
    volumes: pd.DataFrame,
    boxes: pd.DataFrame,
    *,
    strategy: Strategy,
    normal_fraction: float = 0.15,
    seed: int = 0,
    lesion_window: int = 2,
) -> pd.DataFrame:
    """Plan which frames of which volumes to extract, one row per volume.

    Only included volumes (``excluded_reason`` null, ``label`` 0 or 1) are considered.

    - ``"all-slices"`` (the study's method 1): every frame of each benign/cancer volume
      (rule ``"all"``, label 1) and a seeded ``normal_fraction`` of each normal volume's
      frames (rule ``"fraction:0.15"``, label 0).
    - ``"single-slice"`` (method 2): **exactly one image per patient**, so that volume- and
      patient-level aggregation cannot reward a patient for having more images. A positive
      patient gives the boxed slice of its largest lesion (largest box area over all of the
      patient's boxed benign/cancer volumes; ties go to the first by study, view and slice):
      rule ``"frames:12"``, label 1. A normal patient (one whose included volumes are all
      normal) gives one seeded slice (rule ``"pick:1"``, a frame drawn from ``(seed,
      volume)``) of one of its normal volumes, chosen by ``(seed, patient_id)``.
    - ``"lesion-slices"``: each benign/cancer volume's frames within ``lesion_window`` of a
      box's ``slice``, clipped to ``0..VolumeSlices-1`` (``"frames:10,11,12,13,14"``,
      label 1; the rest of the volume is not used); normals as in ``"all-slices"``.

    Benign/cancer volumes without a box cannot be used by ``single-slice`` or
    ``lesion-slices``; they are left out with a warning naming them.

    Args:
        volumes: From :func:`tasks.prepare.cohorts.build_volume_table` (other columns, e.g.
            ``volume_path`` or ``split``, are carried through).
        boxes: :attr:`tasks.prepare.cohorts.BcsTables.boxes`.
        strategy: One of :data:`STRATEGIES`.
        normal_fraction: Share of each normal volume's frames, in (0, 1].
        seed: Seeds the choices here and, through the rules, in :func:`resolve_frames`.
        lesion_window: Frames either side of a box's ``slice`` (``lesion-slices``).

    Returns:
        :data:`PLAN_COLUMNS` then the volume table's other columns (without
        ``excluded_reason``): ``label`` int8, ``frames_rule`` str, ``n_boxes`` int and
        ``boxes`` (JSON list of the volume's boxes with :data:`BOX_FIELDS`, ``"[]"`` for
        normals), sorted by volume.

    Raises:
        ValueError: ``strategy``, ``normal_fraction`` or ``lesion_window`` outside what
            :class:`~tasks.core.config.SlicesConfig` accepts, or a table lacking columns.
    """
    # The bounds are SlicesConfig's: a direct call is checked against the same fields.
    SlicesConfig.model_validate({"strategy": strategy, "normal_fraction": normal_fraction,
                                 "lesion_window": lesion_window})
    missing = [c for c in (*KEY, "cohort", "label", "excluded_reason") if c not in volumes.columns]
    if missing:
        raise ValueError(f"select_slices: the volume table lacks columns {missing}; pass build_volume_table's output")

    used = volumes.loc[volumes["excluded_reason"].isna() & volumes["label"].isin((0, 1))]
    used = used.sort_values(KEY, kind="stable").reset_index(drop=True)
    by_volume = _boxes_by_volume(boxes)
    keys = list(used[KEY].astype(str).itertuples(index=False, name=None))
    label = used["label"].astype("int64").to_numpy()

    normal_rule = FrameRule.share(float(normal_fraction))
    rules = _volume_rules(keys, label, by_volume, strategy=strategy, normal_rule=normal_rule,
                          lesion_window=int(lesion_window))
    if strategy == "single-slice":
        _single_slice_rules(rules, keys, label, by_volume, seed=seed)

    plan = _with_rules(used, rules, by_volume)
    rest = [c for c in plan.columns if c not in PLAN_COLUMNS and c != "excluded_reason"]
    plan = plan[[*PLAN_COLUMNS, *rest]]
    logger.info(
        "%s: %d volumes planned (%d positive, %d normal)", strategy, len(plan),
        int((plan["label"] == 1).sum()), int((plan["label"] == 0).sum()),
    )
    return plan


def extraction_jobs(plan: str) -> list[dict[str, Any]]:
    """One job per volume of the plan file ``plan``: its key, where it is on disk and which frames to extract."""
    return pd.read_parquet(plan)[["patient_id", "study_uid", "view", "descriptive_path",
                                  "classic_path", "frames_rule"]].to_dict("records")
