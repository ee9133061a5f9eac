"""Checks a manifest must pass before any epoch runs: no patient on two sides, readable images.

``prepare`` audits its own splits, but ``train`` may be given any manifest (an edited copy,
a merge of two preparations); a patient in two splits would leak, and a corrupt PNG would
stop training mid-epoch with a traceback from a loader worker.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

#: Splits training reads (the test split is read only by ``evaluate``).
TRAINING_SPLITS = ("train", "validation")


def audit_splits(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Stop when a patient has rows in more than one split (prepare's leak audit, repeated).

    Raises:
        ValueError: Naming the manifest and how many patients cross splits.
    """
    from tasks.prepare.splits import assert_disjoint

    try:
        assert_disjoint(frame.dropna(subset=["split"]))
    except ValueError as exc:
        raise ValueError(
            f"manifest '{path}' fails the leak audit: {exc}. Training on it would score patients the model "
            "has seen; rebuild the manifest with tomoflow prepare"
        ) from None


def verify_images(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Open every training and validation PNG (header and chunk checksums) before training.

    Raises:
        FileNotFoundError: A PNG is missing (named by its ``image_path``).
        ValueError: A PNG cannot be read, naming the file and its manifest row.
    """
    from PIL import Image

    root = Path(path).parent
    used = frame.loc[frame["split"].isin(list(TRAINING_SPLITS)), "image_path"]
    absent = [p for p in used if not (root / p).is_file()]
    if absent:
        raise FileNotFoundError(
            f"manifest '{path}': {len(absent)} image file(s) are missing under '{root}', first "
            f"image_path {absent[0]!r}; rerun the prepare-data flow (and offline balancing, if used)"
        )
    for row, image_path in used.items():
        try:
            with Image.open(root / image_path) as image:
                image.verify()
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a damaged file
            raise ValueError(
                f"manifest '{path}' row {row}: image '{root / image_path}' cannot be read as a PNG "
                f"({type(exc).__name__}); rerun tomoflow prepare into the same --out to extract it again"
            ) from None
