"""The report export of a synthetic collection: radiology and pathology texts, distractors.

Every text carries a fake name, birth date and MRN (the filter must drop them) and fits
its study's cohort; the distractors each fail exactly one of the report filter's rules.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

import numpy as np

from synth.layout import REPORT_DATE_RANGE
from synth.anatomy import round_half_up
from synth.plan import Patient, Study


_FIRST = ("Jane", "Mary", "Linda", "Susan", "Karen", "Nancy", "Betty", "Helen", "Sandra", "Donna",
          "Carol", "Ruth", "Sharon", "Laura", "Sarah", "Kimberly", "Deborah", "Lisa", "Angela")
_LAST = ("Doe", "Roe", "Smith", "Moe", "Poe", "Lowe", "Stone", "Hart", "Fields", "Brook", "Vale",
         "Marsh", "Glenn", "Wood", "Lake", "Hill", "Ford", "Shaw")
_TOMO = ("tomosynthesis", "Tomosynthesis", "TOMOSYNTHESIS")
_BIRADS_WORDS = {
    0: "incomplete", 1: "negative", 2: "benign", 3: "probably benign", 4: "suspicious",
    5: "highly suggestive of malignancy",
}
_CANCER_FINDINGS = (
    "invasive ductal carcinoma, Nottingham grade {grade}",
    "ductal carcinoma in situ (DCIS), high nuclear grade",
    "DCIS, intermediate nuclear grade, cribriform type",
    "invasive lobular carcinoma",
    "invasive ductal carcinoma with associated DCIS",
)
_BENIGN_FINDINGS = (
    "fibroadenoma",
    "benign fibrocystic changes",
    "benign breast tissue, negative for malignancy",
    "fibroadenoma; no evidence of carcinoma",
    "usual ductal hyperplasia with benign fibrocystic changes; negative for malignancy",
)


def _birads_text(rng: np.random.Generator, category: int) -> str:
    style = int(rng.integers(0, 5))
    if style == 0:
        return f"BI-RADS {category}"
    if style == 1:
        return f"BIRADS: {category}"
    if style == 2:
        return f"Bi-Rads category {category}"
    if style == 3:
        return f"BI-RADS: {category} - {_BIRADS_WORDS[category]}"
    return f"BI-RADS Category {category}: {_BIRADS_WORDS[category].capitalize()}"


def _choice(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(0, len(options)))]


def _radiology_text(
    rng: np.random.Generator, header: str, cohort: str, side: str | None, *, modality: str = ""
) -> str:
    side_word = {"l": "left", "r": "right"}.get(side or "", "left")
    clock = int(rng.integers(1, 13))
    if cohort == "normal":
        category = int(rng.integers(1, 3))
        findings = _choice(rng, (
            "No suspicious masses, calcifications or architectural distortion.",
            "Scattered areas of fibroglandular density. No mammographic evidence of malignancy.",
            "Stable benign-appearing calcifications. No suspicious findings.",
        ))
    elif cohort == "actionable":
        category = int(_choice(rng, (0, 3, 4)))
        findings = (
            f"Focal asymmetry in the {side_word} breast at {clock} o'clock. "
            + _choice(rng, ("Additional imaging recommended.", "Short-interval follow-up advised.",
                            "Diagnostic evaluation recommended."))
        )
    else:
        category = 4 if rng.random() < (0.8 if cohort == "benign" else 0.4) else 5
        shape = _choice(rng, (
            "Irregular spiculated mass", "Oval circumscribed mass", "Irregular mass",
            "Mass with architectural distortion",
        ))
        findings = (
            f"{shape} in the {side_word} breast at {clock} o'clock, "
            f"{int(rng.integers(2, 12))} cm from the nipple, "
            f"measuring {int(rng.integers(6, 35))} mm. "
            "Tissue sampling recommended."
        )
    if modality:
        exam = modality
    else:
        t = _choice(rng, _TOMO)
        exam = _choice(rng, (
            f"Bilateral screening digital breast {t} (DBT).",
            f"{t} (3D mammography), bilateral, with synthesized 2D views.",
            f"Screening mammogram with digital breast {t}.",
        ))
    return (
        f"RADIOLOGY REPORT\n{header}\nExam: {exam}\nFindings: {findings}\n"
        f"Impression: {_birads_text(rng, category)}"
    )


def _pathology_text(rng: np.random.Generator, header: str, cohort: str, side: str) -> str:
    side_word = {"l": "left", "r": "right"}[side]
    procedure = _choice(rng, ("ultrasound-guided core needle biopsy", "stereotactic biopsy",
                              "excisional biopsy", "lumpectomy"))
    finding = _choice(rng, _CANCER_FINDINGS if cohort == "cancer" else _BENIGN_FINDINGS)
    finding = finding.format(grade=int(rng.integers(1, 4)))
    return (
        f"SURGICAL PATHOLOGY REPORT\n{header}\n"
        f"Specimen: {side_word.capitalize()} breast, {int(rng.integers(1, 13))} o'clock, "
        f"{procedure}.\n"
        f"Final diagnosis: {side_word} breast, {procedure}: {finding}."
    )


def _date_between(rng: np.random.Generator, start: _dt.date, end: _dt.date) -> _dt.date:
    return start + _dt.timedelta(days=int(rng.integers(0, (end - start).days + 1)))


def build_reports(
    rng: np.random.Generator, patients: list[Patient]
) -> list[tuple[str, str, str, str, str]]:
    """Rows (patient_id, study_uid, report_type, report_date, text), before ids are given."""
    start, end = REPORT_DATE_RANGE
    rows: list[tuple[str, str, str, str, str]] = []
    headers: dict[str, str] = {}
    for p in patients:
        dob = _dt.date(1935, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 40 * 365)))
        name = f"{_choice(rng, _FIRST)} Synthetic-{_choice(rng, _LAST)}"
        mrn = int(rng.integers(10_000_000, 100_000_000))
        headers[p.patient_id] = f"Patient: {name}, DOB {dob.isoformat()}\nMRN: {mrn}"
        # Two studies sit about a year apart; a positive study leaves room for its pathology.
        last_positive = end - _dt.timedelta(days=120)
        first = _date_between(
            rng, start, end - _dt.timedelta(days=520 if len(p.studies) > 1 else 120)
        )
        for k, study in enumerate(p.studies):
            study.date = first + _dt.timedelta(days=k * int(rng.integers(300, 401)))
            if study.cohort != "normal" and study.date > last_positive:
                study.date = last_positive
            header = headers[p.patient_id]
            rows.append((p.patient_id, study.study_uid, "radiology", study.date.isoformat(),
                         _radiology_text(rng, header, study.cohort, study.side)))
            if study.cohort in ("benign", "cancer"):
                assert study.side is not None
                path_date = study.date + _dt.timedelta(days=int(rng.integers(5, 121)))
                rows.append((p.patient_id, study.study_uid, "pathology", path_date.isoformat(),
                             _pathology_text(rng, header, study.cohort, study.side)))

    # Distractors: each fails exactly one of the filter's rules, on a real patient and study.
    all_studies = [(p, s) for p in patients for s in p.studies]

    def some_study() -> tuple[Patient, Study]:
        return all_studies[int(rng.integers(0, len(all_studies)))]

    n_out = max(2, round_half_up(0.03 * len(all_studies)))
    for i in range(n_out):
        p, s = some_study()
        if i == 0:
            date = end + _dt.timedelta(days=1)  # the day after the range: boundary check
        elif i == 1:
            date = start - _dt.timedelta(days=1)
        elif i % 2:
            date = _date_between(rng, _dt.date(2010, 1, 1), start - _dt.timedelta(days=1))
        else:
            date = _date_between(rng, end + _dt.timedelta(days=1), _dt.date(2020, 12, 31))
        rows.append((p.patient_id, s.study_uid, "radiology", date.isoformat(),
                     _radiology_text(rng, headers[p.patient_id], "normal", None)))
    n_other = max(2, round_half_up(0.03 * len(all_studies)))
    for _ in range(n_other):
        p, s = some_study()
        modality = _choice(rng, (
            "Bilateral breast ultrasound.", "Breast MRI with and without contrast.",
            "Diagnostic 2D digital mammogram, left.", "Targeted breast ULTRASOUND.",
        ))
        rows.append((p.patient_id, s.study_uid, "radiology",
                     _date_between(rng, start, end).isoformat(),
                     _radiology_text(rng, headers[p.patient_id], "normal", None,
                                     modality=modality)))
    p, s = some_study()
    rows.append((p.patient_id, s.study_uid, "pathology", _date_between(rng, start, end).isoformat(),
                 f"SURGICAL PATHOLOGY REPORT\n{headers[p.patient_id]}\n"
                 "Specimen: Colon, sigmoid, endoscopic biopsy.\n"
                 "Final diagnosis: tubular adenoma; negative for high-grade dysplasia."))
    p, s = some_study()
    rows.append((p.patient_id, s.study_uid, "radiology", "2016-13-45",
                 _radiology_text(rng, headers[p.patient_id], "normal", None)))
    p, s = some_study()
    rows.append((p.patient_id, s.study_uid, "cardiology",
                 _date_between(rng, start, end).isoformat(),
                 f"ECHOCARDIOGRAM REPORT\n{headers[p.patient_id]}\n"
                 "Transthoracic echocardiogram. Normal left ventricular size and systolic "
                 "function. Ejection fraction 60%."))
    return rows
