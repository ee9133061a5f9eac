"""Inference: one tumour probability per image of a manifest split.

:func:`predict` runs a trained classifier over the images of one split, in manifest order,
with the validation / test preprocessing of training (:func:`~models.training.augment.eval_transforms`),
and returns a DataFrame with one row per image: its ids, label, cohort, box and the
probability ``sigmoid(logit)``. Offline-augmented copies (``augmented_from`` set) are left
out: they are training material, not cases. The DataFrame is what ``predictions.parquet``
holds and what :mod:`tasks.evaluate.metrics` and :mod:`models.explain.gradcam` read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from models.training.data import ManifestDataset
from models.training.engine import batch_to_device, resolve_device
from models.nets.heads import logits_of
from models.training.augment import eval_transforms
from models.training.manifest_audit import outside_images
from tasks.core.schema import MANIFEST_COLUMNS, VOLUME_KEY

__all__ = ["ID_COLUMNS", "PREDICTION_COLUMNS", "REQUIRED_COLUMNS", "predict"]

#: Columns that identify an image (pseudonymous BCS-DBT ids and the frame number).
ID_COLUMNS = [*VOLUME_KEY, "slice_index"]

#: Columns of the prediction table, in order. ``manifest_row`` is the row's position in the
#: manifest that was predicted on; ``cohort`` and the box columns are null when the
#: manifest lacks them.
PREDICTION_COLUMNS = [
    *ID_COLUMNS,
    "label",
    "probability",
    "split",
    "logit",
    "cohort",
    "image_path",
    "box_x",
    "box_y",
    "box_width",
    "box_height",
    "box_class",
    "manifest_row",
]

#: Manifest columns :func:`predict` needs.
REQUIRED_COLUMNS = (*ID_COLUMNS, "label", "split", "image_path")

#: Manifest columns copied when present (null otherwise), with the manifest's dtypes.
_OPTIONAL = {c: MANIFEST_COLUMNS[c] for c in ("cohort", "box_x", "box_y", "box_width", "box_height", "box_class")}


def predict(
    model: nn.Module,
    manifest: pd.DataFrame,
    *,
    root: str | os.PathLike[str],
    split: str,
    image_size: int,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> pd.DataFrame:
    """Tumour probabilities for every (non-augmented) image of one split.

    The model is moved to ``device`` and put in eval mode (both in place), and run under
    ``torch.inference_mode`` in float32; the images are read in manifest order (no
    shuffling), so the same model, manifest and batch size give the same table, bit for
    bit on the CPU.

    Args:
        model: A classifier mapping ``(B, 1, H, W)`` gray images in [0, 1] to logits ``(B,)``
            (a :class:`~models.nets.classifier.TumorClassifier`, e.g. from :func:`~models.training.checkpoint.load_classifier`).
        manifest: The manifest (``manifest.parquet`` as a DataFrame).
        root: Folder the manifest's ``image_path`` values are relative to (the manifest's).
        split: ``"train"``, ``"validation"`` or ``"test"``.
        image_size: Network input side; the size the run trained at (``train.image_size``).
        batch_size: Images per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        num_workers: DataLoader workers (0: read in this process).

    Returns:
        One row per image of ``split`` whose ``augmented_from`` is null, in manifest order,
        with the columns :data:`PREDICTION_COLUMNS`; ``probability`` is ``sigmoid(logit)``.

    Raises:
        ValueError: Missing manifest columns, a non-positive ``batch_size``, or no image in
            ``split`` (the splits found are named).
        FileNotFoundError: A PNG of the split is missing (named by its ``image_path``).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(
            f"the manifest lacks the columns {missing} needed for prediction (has {list(manifest.columns)}); "
            "rebuild it with the prepare-data flow"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    rows = _split_rows(manifest, split)
    outside = outside_images(rows, Path(root) / "manifest.parquet", root=root)
    if outside:
        raise ValueError(outside)
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    dataset = ManifestDataset(rows, split, root=Path(root), transform=eval_transforms(image_size))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    model.to(device).eval()
    logits: list[np.ndarray] = []
    order: list[np.ndarray] = []
    with torch.inference_mode():
        for images, _, index in loader:
            out = logits_of(model(batch_to_device(images, device)))
            logits.append(out.float().reshape(-1).cpu().numpy())
            order.append(np.asarray(index, dtype=np.int64))
    logit = np.concatenate(logits).astype(np.float64)
    positions = np.concatenate(order)
    if not np.array_equal(positions, rows.index.to_numpy()):
        raise RuntimeError("the data loader returned the images out of manifest order")
    return _table(rows, logit, positions)


def _split_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """The non-augmented rows of ``split``, indexed by their position in ``manifest``.

    Raises:
        ValueError: No such row (the splits found are named).
    """
    frame = manifest.reset_index(drop=True)
    keep = frame["split"].eq(split).fillna(False).astype(bool)
    if "augmented_from" in frame.columns:
        keep &= frame["augmented_from"].isna()
    rows = frame.loc[keep]
    if rows.empty:
        found = sorted(str(s) for s in frame["split"].dropna().unique())
        raise ValueError(
            f"the manifest has no (non-augmented) images in split {split!r}; splits found: {found}"
        )
    return rows


def _table(rows: pd.DataFrame, logit: np.ndarray, positions: np.ndarray) -> pd.DataFrame:
    """The prediction table (:data:`PREDICTION_COLUMNS`) of ``rows`` and their logits."""
    out = pd.DataFrame(index=rows.index)
    for column in ("patient_id", "study_uid", "view"):
        out[column] = rows[column].astype("string")
    out["slice_index"] = rows["slice_index"].astype("int32")
    out["label"] = rows["label"].astype("int8")
    # float64 sigmoid of the float32 logit: no rounding of confident probabilities to 1.0 in float32.
    out["probability"] = 1.0 / (1.0 + np.exp(-logit))
    out["logit"] = logit
    out["split"] = rows["split"].astype("string")
    for column, dtype in _OPTIONAL.items():
        if column in rows.columns:
            out[column] = rows[column].astype(dtype)
        else:
            out[column] = pd.Series(np.nan if dtype == "float64" else pd.NA, index=rows.index, dtype=dtype)
    out["image_path"] = rows["image_path"].astype("string")
    out["manifest_row"] = positions
    return out[PREDICTION_COLUMNS].reset_index(drop=True)
