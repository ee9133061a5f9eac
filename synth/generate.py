"""A whole synthetic collection, shaped like Duke's BCS-DBT release, under one folder.

What is written (names and columns as in the real release):

* ``BCS-DBT file-paths-train-v2.csv``, ``BCS-DBT labels-train-v2.csv``,
  ``BCS-DBT boxes-train-v2.csv`` (train: a space after ``BCS-DBT``) and
  ``BCS-DBT-file-paths-validation-v2.csv`` ... ``BCS-DBT-boxes-test-v2.csv``
  (validation and test: a hyphen). Patients are split about 80/8/12, stratified by
  cohort; every split has a boxes file, header-only when it has no positives.
* ``Breast-Cancer-Screening-DBT/<PatientID>/01-01-2000-<StudyUID>-NNNNN/``
  ``NNNNN.000000-NNNNN/1-1.dcm``: one multi-frame JPEG 2000 DBT file per view, 10 bits
  stored, frame counts varying per volume. About 20% of the series folders are named
  ``NNNNN.000000-NA-NNNNN`` on disk while the CSV says ``NNNNN.000000-NNNNN``;
  ``classic_path`` (UID folders, the UIDs written in the file) never exists on disk.
* ``reports.csv`` (``reports=True``): columns ``report_id, patient_id, study_uid,
  report_type, report_date, text``. Per study a ``radiology`` report (2014-01-01 to
  2018-01-30, mentions tomosynthesis, a BI-RADS category that fits the cohort) and, for
  benign and cancer studies, a ``pathology`` report 5 to 120 days later naming the side.
  Distractors: radiology out of the date range or not tomosynthesis, pathology not about
  the breast, a malformed date (``2016-13-45``), an unknown type (``cardiology``); each
  is linked to a real patient and study. Texts carry a fake name and birth date, and
  contain newlines (quoted CSV fields).

Box coordinates and ``Slice`` are in the oriented frame of Duke's reader: breast against
the right edge for R views and the left edge for L views, air elsewhere (exactly 0).
About 25% of the volumes are stored rotated by 180 degrees, so the reader's rule (edge
column sums) must rotate them back; about 5% carry the other side in FrameLaterality
(and ImageLaterality); a few normal studies miss one view; one cancer study's lesion-side
rows also say Benign (most severe flag wins; its boxes say ``cancer``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, JPEG2000Lossless

from synth.dicom_writer import dbt_dataset, frame_encoder, save_encoded
from synth.layout import (
    BOXES_COLUMNS, FILE_PATHS_COLUMNS, FULL_COLUMNS, FULL_ROWS, LABELS_COLUMNS, MIN_FRAME_SIDE,
    REPORT_COLUMNS, REPORTS_FILE, csv_file_name, csv_text,
)
from synth.anatomy import DIFFICULTIES, LesionSettings, lesion_settings
from synth.plan import Patient, Volume, plan
from synth.render import Renderer, display_window, lesion_visibility
from synth.report_text import build_reports
from tasks.core.files import atomic_write_text
from tasks.core.schema import COHORTS, SPLITS

#: Most patients a collection holds: their studies (about 1.1 a patient) keep five-digit ``DBT-S`` numbers.
MAX_PATIENTS = 90_000

#: Worker processes for encoding; None decides from the amount of work (tests set it).
_WORKERS: int | None = None


def _volume_dataset(vol: Volume, rows: int, cols: int) -> Dataset:
    """The header of a generated volume (wrong FrameLaterality where the plan says so)."""
    centre, width = display_window(vol)
    other = "L" if vol.side == "R" else "R"
    return dbt_dataset(
        n=vol.n_frames, rows=rows, cols=cols, patient_id=vol.patient_id,
        study_uid=vol.study_uid, view=vol.view, window_center=centre, window_width=width,
        frame_laterality=other if vol.wrong_laterality else vol.side, bits_stored=10,
        photometric="MONOCHROME2", window_location="shared",
    )


def _encode_chunk(args: tuple[Volume, int, int, int, int, int]) -> list[bytes]:
    """Draw and encode frames ``z0 <= z < z1`` of one volume (runs in a worker process)."""
    vol, rows, cols, seed, z0, z1 = args
    renderer = Renderer(vol, rows, cols, seed)
    encode = frame_encoder(_volume_dataset(vol, rows, cols), UID(JPEG2000Lossless))
    return [encode(renderer.frame(z)) for z in range(z0, z1)]


#: Pixels per work item: a small volume is one item, a full-size one about five frames.
_CHUNK_PIXELS = 24_000_000
#: Below this many pixels in all, starting worker processes costs more than it saves.
_PARALLEL_PIXELS = 30_000_000


def _default_workers(total_pixels: int, items: int) -> int:
    if total_pixels < _PARALLEL_PIXELS:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, items, 8))


def _write_volumes(
    volumes: list[Volume], root: Path, rows: int, cols: int, seed: int, workers: int | None
) -> None:
    """Write every volume's DICOM; frames are encoded in worker processes when it pays."""
    per = max(1, _CHUNK_PIXELS // (rows * cols))
    items = [
        (v.index, z0, min(z0 + per, v.n_frames))
        for v in volumes for z0 in range(0, v.n_frames, per)
    ]
    if workers is None:
        workers = _default_workers(sum(v.n_frames for v in volumes) * rows * cols, len(items))
    args = [(volumes[i], rows, cols, seed, z0, z1) for i, z0, z1 in items]

    def results() -> Iterator[list[bytes]]:
        if workers <= 1:
            yield from map(_encode_chunk, args)
            return
        # "spawn": the caller may be a threaded Prefect worker, where fork is unsafe.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            yield from pool.map(_encode_chunk, args)

    parts: list[bytes] = []
    for (i, _z0, z1), chunk in zip(items, results()):
        parts.extend(chunk)
        if z1 == volumes[i].n_frames:  # chunks come back in order: the volume is complete
            vol = volumes[i]
            save_encoded(_volume_dataset(vol, rows, cols), root / vol.disk_path, parts,
                         UID(JPEG2000Lossless))
            parts = []


def generate_dataset(
    out: str | os.PathLike,
    *,
    patients: int = 40,
    seed: int = 0,
    rows: int = 256,
    columns: int = 196,
    full_size: bool = False,
    frames: tuple[int, int] | None = None,
    positive_fraction: float | None = None,
    reports: bool = True,
    difficulty: str = "easy",
    lesion_contrast: float | None = None,
    lesion_size: float | None = None,
    lesion_count: int | None = None,
) -> dict:
    """Write a synthetic dataset shaped like Duke's BCS-DBT collection under ``out``.

    Usage at a terminal: ``tomoflow synth OUT --patients 40 --seed 0 [--full-size]``.

    The files written and the traps they hold are listed in this module's docstring.

    Frames are encoded in worker processes ("spawn") when there is enough work, so a script
    that calls this must guard its entry point with ``if __name__ == "__main__":``.

    Args:
        out: Output folder (created; existing files with the same names are overwritten,
            nothing else is removed).
        patients: Number of patients (1 to 90000). Cohorts: positive (benign and cancer, about
            evenly) :data:`synth.plan.DEFAULT_POSITIVE_FRACTION` (40%, at least 2 of each),
            actionable ``max(1, 5%)``, the rest normal; about 10% of patients have a second,
            normal study.
        seed: Seed of every random choice; the same seed gives the same bytes in every file.
            The ids come from it too (:func:`synth.plan.seeded_id`: ``DBT-P00013`` for seed 0,
            ``DBT-P700013`` for seed 7), so collections of different seeds share no PatientID,
            StudyUID or DICOM UID.
        rows: Frame rows (at least 32); ignored with ``full_size``.
        columns: Frame columns (at least 32); ignored with ``full_size``.
        full_size: Frames of 2457 x 1890 as in the collection.
        frames: Inclusive (min, max) frame count per volume; default (16, 32), or (49, 95)
            with ``full_size``.
        positive_fraction: If given, this fraction of patients is positive, split about evenly
            between benign and cancer (overrides the default 40%, with no floor).
        reports: Also write ``reports.csv``.
        difficulty: ``easy`` (the default: plainly visible lesions),
            ``moderate`` or ``subtle`` (:data:`synth.anatomy.DIFFICULTIES`).
        lesion_contrast: Peak brightening in tissue-texture SDs, over the level's.
        lesion_size: Factor on the lesion box side, over the level's.
        lesion_count: Lesions per positive volume, over the level's.

    Returns:
        A JSON-able summary: ``out``, ``seed``, ``patients``, ``studies``, ``volumes``, ``rows``,
        ``columns``, ``frames``, ``cohort_patients``, ``cohort_studies``, ``cohort_volumes``
        (by most severe flag), ``positive_volumes``, ``boxes``, ``double_flag_rows``,
        ``two_study_patients``, ``missing_view_studies``, ``splits`` (patients and volumes
        per split), ``csv`` (file names per split and kind), ``reports`` (path or None),
        ``report_rows``, ``na_drift_volumes``, ``rotated_volumes``,
        ``wrong_laterality_volumes``, ``difficulty``, ``lesion_settings`` (``contrast``,
        ``size``, ``count``), ``lesion_visibility`` (``lesions``, ``size_of_frame``:
        box side / frame's long side, ``smallest_px_at``: pixels across the smallest lesion in
        a 64, 96 and 224 px image, ``contrast_of_window``: peak brightening / display window
        width, ``contrast_to_texture``: peak brightening / tissue texture SD, each as min,
        median, max; and a one-line ``note``) and ``details`` (the ``PatientID/StudyUID/View``
        keys of the ``na_drift``, ``rotated``, ``wrong_laterality`` volumes).

    Raises:
        ValueError: A bad argument, named with the allowed values.
    """
    rows, columns, frames = _checked_args(
        patients, seed, rows, columns, full_size, frames, positive_fraction
    )
    settings = lesion_settings(difficulty, contrast=lesion_contrast, size=lesion_size, count=lesion_count)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    people, volumes, extras = plan(
        patients=patients, seed=seed, rows=rows, cols=columns, frames=frames,
        positive_fraction=positive_fraction, lesions=settings,
    )
    _write_volumes(volumes, root, rows, columns, seed, _WORKERS)
    names, n_boxes = _write_csvs(root, volumes)
    report_path, report_rows = _write_reports(root, people, seed) if reports else (None, 0)
    if settings != LesionSettings():  # the default (easy) collection keeps exactly its files
        atomic_write_text(root / "tomoflow-synth.json", json.dumps(
            {"generator": "tomoflow synth", "difficulty": difficulty if settings == DIFFICULTIES[difficulty]
             else "custom", "lesion_settings": asdict(settings), "seed": seed}, sort_keys=True) + "\n")
    written = {"boxes": n_boxes, "csv": names, "reports": report_path, "report_rows": report_rows,
               "difficulty": difficulty, "lesion_settings": asdict(settings)}
    return _summary(root, seed, (rows, columns, frames), people, volumes, {**extras, **written})


def _checked_args(
    patients: int, seed: int, rows: int, columns: int, full_size: bool,
    frames: tuple[int, int] | None, positive_fraction: float | None,
) -> tuple[int, int, tuple[int, int]]:
    """Check :func:`generate_dataset`'s arguments; the frame size and frame range to use."""
    if isinstance(patients, bool) or not isinstance(patients, int) or not 1 <= patients <= MAX_PATIENTS:
        raise ValueError(f"patients={patients!r}: expected an integer from 1 to {MAX_PATIENTS}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected a non-negative integer")
    if full_size:
        rows, columns = FULL_ROWS, FULL_COLUMNS
    if rows < MIN_FRAME_SIDE or columns < MIN_FRAME_SIDE:
        raise ValueError(
            f"rows={rows}, columns={columns}: JPEG 2000 needs at least {MIN_FRAME_SIDE} "
            "pixels a side"
        )
    if frames is None:
        frames = (49, 95) if full_size else (16, 32)
    frames = (int(frames[0]), int(frames[1]))
    if not 1 <= frames[0] <= frames[1]:
        raise ValueError(f"frames={frames}: expected (min, max) with 1 <= min <= max")
    if positive_fraction is not None and not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction={positive_fraction!r}: expected a value in [0, 1]")
    return rows, columns, frames


def _write_csvs(root: Path, volumes: list[Volume]) -> tuple[dict[str, dict[str, str]], int]:
    """The file-paths, labels and boxes CSVs of every split; their names and the box count."""
    names: dict[str, dict[str, str]] = {}
    n_boxes = 0
    for split in SPLITS:
        vols = [v for v in volumes if v.split == split]
        names[split] = {
            "file_paths": csv_file_name("file-paths", split),
            "labels": csv_file_name("labels", split),
            "boxes": csv_file_name("boxes", split),
        }
        atomic_write_text(root / names[split]["file_paths"], csv_text(
            FILE_PATHS_COLUMNS,
            ((v.patient_id, v.study_uid, v.view, v.descriptive_path, v.classic_path) for v in vols),
        ))
        atomic_write_text(root / names[split]["labels"], csv_text(
            LABELS_COLUMNS, ((v.patient_id, v.study_uid, v.view, *v.flags) for v in vols),
        ))
        box_rows = [
            (v.patient_id, v.study_uid, v.view, v.patient_number, les.slice, les.x, les.y,
             les.width, les.height, les.cls, les.ad, v.n_frames)
            for v in vols for les in v.lesions
        ]
        n_boxes += len(box_rows)
        atomic_write_text(root / names[split]["boxes"], csv_text(BOXES_COLUMNS, box_rows))
    return names, n_boxes


def _write_reports(root: Path, people: list[Patient], seed: int) -> tuple[str, int]:
    """``reports.csv`` in a seeded shuffled order with ids ``R000001...``; its path and rows."""
    rows_ = build_reports(np.random.default_rng([seed, 4]), people)
    order = np.random.default_rng([seed, 5]).permutation(len(rows_))
    table = [(f"R{k + 1:06d}", *rows_[int(j)]) for k, j in enumerate(order)]
    atomic_write_text(root / REPORTS_FILE, csv_text(REPORT_COLUMNS, table))
    return str(root / REPORTS_FILE), len(table)


def _summary(
    root: Path, seed: int, shape: tuple[int, int, tuple[int, int]], people: list[Patient],
    volumes: list[Volume], counts: dict[str, Any],
) -> dict[str, Any]:
    """:func:`generate_dataset`'s summary (keys in the order its docstring lists them)."""
    rows, columns, frames = shape

    def severity(flags: tuple[int, ...]) -> str:
        return COHORTS[max(i for i, f in enumerate(flags) if f)]

    studies = [s for p in people for s in p.studies]
    return {
        "out": str(root),
        "seed": seed,
        "patients": len(people),
        "studies": len(studies),
        "volumes": len(volumes),
        "rows": rows,
        "columns": columns,
        "frames": list(frames),
        "cohort_patients": {c: sum(p.cohort == c for p in people) for c in COHORTS},
        "cohort_studies": {c: sum(s.cohort == c for s in studies) for c in COHORTS},
        "cohort_volumes": {c: sum(severity(v.flags) == c for v in volumes) for c in COHORTS},
        "positive_volumes": sum(bool(v.flags[2] or v.flags[3]) for v in volumes),
        "boxes": counts["boxes"],
        "double_flag_rows": sum(sum(v.flags) > 1 for v in volumes),
        "two_study_patients": counts["two_study_patients"],
        "missing_view_studies": counts["missing_view_studies"],
        "splits": {
            split: {
                "patients": sum(p.split == split for p in people),
                "volumes": sum(v.split == split for v in volumes),
            }
            for split in SPLITS
        },
        "csv": counts["csv"],
        "reports": counts["reports"],
        "report_rows": counts["report_rows"],
        "na_drift_volumes": sum(v.na_drift for v in volumes),
        "rotated_volumes": sum(v.rotated for v in volumes),
        "wrong_laterality_volumes": sum(v.wrong_laterality for v in volumes),
        "difficulty": counts["difficulty"],
        "lesion_settings": counts["lesion_settings"],
        "lesion_visibility": lesion_visibility(volumes, rows, columns),
        "details": {
            "na_drift": [v.key for v in volumes if v.na_drift],
            "rotated": [v.key for v in volumes if v.rotated],
            "wrong_laterality": [v.key for v in volumes if v.wrong_laterality],
        },
    }
