"""Checks a manifest must pass before any epoch runs: no patient on two sides, readable images.

``prepare`` audits its own splits, but ``train`` may be given any manifest (an edited copy,
a merge of two preparations); a patient in two splits would leak, and a corrupt PNG would
stop training mid-epoch with a traceback from a loader worker.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from tasks.core.split_leaks import assert_disjoint

#: Splits training reads (the test split is read only by ``evaluate``).
TRAINING_SPLITS = ("train", "validation")


def audit_splits(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Stop when a patient has rows in more than one split (prepare's leak audit, repeated).

    Raises:
        ValueError: Naming the manifest and how many patients cross splits.
    """
    try:
        assert_disjoint(frame.dropna(subset=["split"]))
    except ValueError as exc:
        raise ValueError(
            f"manifest '{path}' fails the leak audit: {exc}. Training on it would score patients the model "
            "has seen; rebuild the manifest with tomoflow prepare"
        ) from None
    audit_duplicate_sources(frame, path)


def audit_duplicate_sources(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Stop when one source DICOM (its ``source_sha256``) is listed under two patients.

    The same image under a normal and a cancer id lands in two splits with opposite labels;
    no id check sees it. Manifests without the column (older prepares) are not checked.

    Raises:
        ValueError: Naming the two patients and their source paths.
    """
    if "source_sha256" not in frame.columns:
        return
    rows = frame.dropna(subset=["source_sha256"])
    if "augmented_from" in rows.columns:
        rows = rows[rows["augmented_from"].isna()]
    patients = rows.groupby("source_sha256")["patient_id"].nunique()
    shared = patients[patients > 1]
    if shared.empty:
        return
    sha = str(shared.index[0])
    first = rows[rows["source_sha256"] == sha].drop_duplicates("patient_id")
    listing = "; ".join(f"patient {r.patient_id} in {r.split} ({getattr(r, 'source_path', '?')})"
                        for r in first.itertuples())
    raise ValueError(
        f"manifest '{path}' fails the leak audit: {len(shared)} source DICOM(s) are listed under two or more "
        f"patients, first sha256 {sha[:12]}: {listing}. The same image under two ids leaks across splits; "
        "fix the file-paths CSV and rebuild the manifest with tomoflow prepare"
    )


def outside_images(frame: pd.DataFrame, path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None,
                   column: str = "image_path") -> str | None:
    """The error for the first row whose image lies outside the manifest's folder, or None.

    Paths are resolved after symlinks (a prepared folder is tomoflow's own output, so a
    symlink leading out of it was put there by someone else): ``../``, an absolute path
    elsewhere or a ``slices`` symlink out of the folder are refused, so a manifest cannot make
    tomoflow read (and embed in a report) a file from elsewhere.

    Args:
        frame: Manifest rows. path: The manifest (named in the message). root: The folder
            the paths are relative to, when not the manifest's own.
    """
    root = os.path.realpath(Path(path).parent if root is None else root)
    for row, image_path in frame[column].items():
        if image_path is None or (isinstance(image_path, float) and pd.isna(image_path)):
            continue
        real = os.path.realpath(Path(root) / str(image_path))
        if not real.startswith(root.rstrip(os.sep) + os.sep):
            return (f"manifest '{path}' row {row}: {column} {str(image_path)!r} resolves outside the manifest's "
                    f"folder '{root}'; it was not read. A manifest's images must lie under its own folder "
                    "(as tomoflow prepare writes them): fix the row or prepare the collection again")
    return None


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
