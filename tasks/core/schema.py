"""The domain's names, defined once: views, cohorts and their severity, splits, strategies,
reject reasons and the columns of the manifest and rejects tables.

Every stage imports these rather than spelling them again, so a new view, cohort or column
is added in one place. Values follow the BCS-DBT collection: four standard views, four label
columns (normal, actionable, benign, cancer) in the labels CSV.
"""

from __future__ import annotations

from typing import Literal

#: Top folder of the TCIA download of the collection (``manifest-*/Breast-Cancer-Screening-DBT``).
COLLECTION_FOLDER = "Breast-Cancer-Screening-DBT"

#: The four standard views of a DBT study: laterality (l/r) and projection (cc/mlo).
VIEWS: tuple[str, ...] = ("lcc", "lmlo", "rcc", "rmlo")

#: Cohorts in increasing severity: when a volume carries two flags the most severe wins.
COHORTS: tuple[str, ...] = ("normal", "actionable", "benign", "cancer")
COHORT_SEVERITY: dict[str, int] = {cohort: rank for rank, cohort in enumerate(COHORTS)}

#: The binary label of each cohort: benign and cancer form the positive class "tumour";
#: actionable volumes are excluded (``None``).
COHORT_LABEL: dict[str, int | None] = {"normal": 0, "actionable": None, "benign": 1, "cancer": 1}
POSITIVE_COHORTS: tuple[str, ...] = ("benign", "cancer")

#: Patient-level splits, in reporting order.
SPLITS: tuple[str, ...] = ("train", "validation", "test")
Split = Literal["train", "validation", "test"]

#: Slice-selection strategies: the study's method 1 (every slice of positive volumes plus a
#: seeded share of normal slices), method 2 (one image per patient), and every boxed slice.
Strategy = Literal["all-slices", "single-slice", "lesion-slices"]
STRATEGIES: tuple[str, ...] = ("all-slices", "single-slice", "lesion-slices")

#: The key of one volume (one view of one study of one patient).
VOLUME_KEY: tuple[str, ...] = ("patient_id", "study_uid", "view")

#: Reject reasons that are choices, not faults: they never count towards ``max_reject_fraction``.
#: ``no-report``: with cohorts from reports alone, a volume whose study has no kept report
#: is outside the report-defined study population (the report query defines the cohort).
BY_DESIGN_REASONS: tuple[str, ...] = ("actionable", "not-selected", "no-report")

#: Column order and dtypes of ``manifest.parquet`` (stable bytes for equal content).
MANIFEST_COLUMNS: dict[str, str] = {
    "patient_id": "string",
    "study_uid": "string",
    "view": "string",
    "slice_index": "int32",
    "label": "int8",
    "cohort": "string",
    "split": "string",
    "image_path": "string",
    "source_path": "string",
    "n_frames": "int32",
    "window_center": "float64",
    "window_width": "float64",
    "window_source": "string",
    "rotated": "bool",
    "scale": "float64",
    "pad_x": "int32",
    "pad_y": "int32",
    "box_x": "float64",
    "box_y": "float64",
    "box_width": "float64",
    "box_height": "float64",
    "box_slice": "Int32",
    "box_class": "string",
    "augmented_from": "string",
    "decode_level": "Int8",
    "decode_note": "string",
    # SHA-256 of the source DICOM's bytes: survives renamed ids, another image size and
    # another choice of frames (the external audit and the duplicate-content check use it).
    "source_sha256": "string",
}

#: Column order and dtypes of ``rejects.parquet``.
REJECT_COLUMNS: dict[str, str] = {
    "kind": "string",
    "patient_id": "string",
    "study_uid": "string",
    "view": "string",
    "report_id": "string",
    "path": "string",
    "reason": "string",
}
