"""What a report's text says, read without keeping it: BI-RADS categories, pathology findings with negation, the side.

Used by :mod:`tasks.prepare.radiology_reports` while it filters the export; only the derived
values (a category, ``malignant``/``benign``, ``left``/``right``) leave this module, never text.
"""

from __future__ import annotations

import re
from typing import Iterable

_BIRADS = re.compile(
    r"\bBI[\s\-]*RADS\b[\s:#\-]*(?:(?:assessment\s+)?category|cat\.?)?[\s:#\-]*([0-6])(?![\d])",
    re.IGNORECASE,
)

#: Order of concern: 0 (incomplete, recall) ranks above 3 (short follow-up), below 4.
BIRADS_CONCERN = {1: 0, 2: 1, 3: 2, 0: 3, 4: 4, 5: 5, 6: 6}


def most_concerning(categories: Iterable[int]) -> int | None:
    """The BI-RADS category of most concern among ``categories`` (None if empty)."""
    values = [int(c) for c in categories]
    return max(values, key=BIRADS_CONCERN.__getitem__) if values else None


def parse_birads(text: str) -> int | None:
    """The BI-RADS category a report states ("BI-RADS 4", "BIRADS: 2", "Bi-Rads category 0",
    "BI-RADS: 2 - benign"); the most concerning when several are given; None when none is
    readable."""
    return most_concerning(int(m.group(1)) for m in _BIRADS.finditer(text or ""))

_MALIGNANT = re.compile(
    r"\b(?:carcinoma|carcinomas|DCIS|malignant|malignancy|invasive\s+\w+|adenocarcinoma|"
    r"ductal\s+carcinoma\s+in\s+situ|lobular\s+carcinoma)\b",
    re.IGNORECASE,
)

_BENIGN = re.compile(
    r"\b(?:benign|fibroadenoma|fibroadenomas|fibrocystic|fibroadenomatoid|papilloma|"
    r"fat\s+necrosis|cyst|cysts|usual\s+ductal\s+hyperplasia|stromal\s+fibrosis)\b",
    re.IGNORECASE,
)


# Negation triggers that precede the finding (NegEx-style pre-negation).
_NEGATION = re.compile(
    r"\b(?:no|not|negative\s+for|no\s+evidence\s+of|without(?:\s+evidence\s+of)?|free\s+of|"
    r"absence\s+of|absent|rules?\s+out|ruled\s+out)\b",
    re.IGNORECASE,
)


# Words that end a negation's scope inside a sentence.
_TERMINATION = re.compile(r"\b(?:but|however|although|except|yet)\b", re.IGNORECASE)

_SENTENCE = re.compile(r"[.;\n]+")

_NEGATION_WINDOW_WORDS = 6


def _negated(sentence: str, start: int) -> bool:
    before = sentence[:start]
    stops = list(_TERMINATION.finditer(before))
    if stops:
        before = before[stops[-1].end():]
    words = before.split()
    window = " ".join(words[-_NEGATION_WINDOW_WORDS:]) if words else ""
    return bool(_NEGATION.search(window))


def classify_pathology(text: str) -> str | None:
    """``"malignant"``, ``"benign"`` or None (no finding recognised) for a pathology report.

    Malignant terms that are not negated make it malignant; otherwise benign terms or a
    negated malignancy ("negative for malignancy", "no evidence of carcinoma") make it
    benign.
    """
    malignant = negated = benign = False
    for sentence in _SENTENCE.split(text or ""):
        for m in _MALIGNANT.finditer(sentence):
            if _negated(sentence, m.start()):
                negated = True
            else:
                malignant = True
        if _BENIGN.search(sentence):
            benign = True
    if malignant:
        return "malignant"
    if benign or negated:
        return "benign"
    return None


_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def pathology_side(text: str) -> str | None:
    """``"L"`` or ``"R"`` when the report names exactly one side, else None."""
    sides = {m.group(1).upper()[0] for m in _SIDE.finditer(text or "")}
    return sides.pop() if len(sides) == 1 else None
