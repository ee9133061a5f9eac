"""Moved to the top-level package :mod:`synth`; these re-exports keep old imports working."""

from synth import (  # noqa: F401  re-export
    BREAST_TOMOSYNTHESIS_STORAGE, deterministic_uid, generate_dataset, write_dbt_dicom,
    write_dbt_dicom_frames,
)
