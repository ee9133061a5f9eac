"""Evaluation beyond the model's own test split: the audit against its training data, and external data.

* :func:`training_audit`: the evaluated rows against the patients, studies and images the
  model trained and was validated on (the checkpoint's ``training_data``, see
  :mod:`models.inference.provenance`); written as ``training_audit.json`` and shown in the report's
  leak audit. Overlap stops the evaluation unless it is explicitly allowed.
* :func:`external_source`: what ``evaluate --external`` names (a manifest, a prepared folder,
  or a BCS-DBT-shaped data root to prepare like the training data).
* :func:`predict_rows`: predictions over one split or ``all`` rows of a manifest.
* :func:`external_comparison`: the external figures beside the model's own test figures and
  the gap with a patient-bootstrap interval; written as ``external.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "AUDIT_NAME",
    "EXTERNAL_NAME",
    "external_comparison",
    "external_prepare_settings",
    "external_source",
    "predict_rows",
    "training_audit",
]

AUDIT_NAME = "training_audit.json"
EXTERNAL_NAME = "external.json"


def _rows(frame: pd.DataFrame, split: str) -> pd.DataFrame:
    if split == "all":
        return frame[frame["split"].notna()]
    return frame[frame["split"].eq(split).fillna(False).astype(bool)]


def training_audit(checkpoint: str | os.PathLike[str], manifest: str | os.PathLike[str], split: str, *,
                   allow_overlap: bool, out_dir: str | os.PathLike[str]) -> Path:
    """Audit the evaluated rows against the model's training and validation data; write ``training_audit.json``.

    Evaluating the model's own ``train`` or ``validation`` split of the manifest it trained on
    is overlap by request: it is reported, never stopped.

    Raises:
        models.inference.provenance.TrainingOverlapError: Overlap, and ``allow_overlap`` is off.
    """
    from models.inference.provenance import TrainingOverlapError, audit_overlap, overlap_message
    from models.training.checkpoint import read_checkpoint
    from tasks.core.files import atomic_write_json, file_fingerprint

    # The first read of the checkpoint in an evaluation: a truncated file gets its one clear line here.
    ckpt = read_checkpoint(checkpoint, advice=(
        "train again (delete the run folder's best.pt first), or evaluate another run"))
    record = ckpt.get("training_data") if isinstance(ckpt, dict) else None
    from models.training.manifest_audit import outside_images

    frame = pd.read_parquet(manifest)
    outside = outside_images(_rows(frame, split), manifest)  # before any image is opened
    if outside:
        raise ValueError(outside)
    audit = audit_overlap(record, _rows(frame, split), root=Path(manifest).parent,
                          manifest_fingerprint=file_fingerprint(manifest, content=True))
    audit["split"] = split
    by_request = audit.get("same_manifest") and split in ("train", "validation")
    audit["by_request"] = bool(by_request)
    audit["allowed"] = bool(allow_overlap)
    message = None if by_request else overlap_message(audit, what=f"the {split} rows of '{manifest}'")
    audit["message"] = message
    if message and not (allow_overlap or by_request):
        raise TrainingOverlapError(message)
    return atomic_write_json(Path(out_dir) / AUDIT_NAME, audit)


def external_source(path: str | os.PathLike[str]) -> tuple[str, Path]:
    """What ``--external`` names: ``("manifest", file)`` or ``("data_root", folder)``.

    Raises:
        FileNotFoundError: Nothing there.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return "manifest", p
    if (p / "manifest.parquet").is_file():
        return "manifest", p / "manifest.parquet"
    if p.is_dir():
        return "data_root", p
    raise FileNotFoundError(
        f"--external '{p}' does not exist; give a manifest.parquet, a prepared folder holding one, or a "
        "BCS-DBT-shaped data root"
    )


def external_prepare_settings(training_manifest: str | os.PathLike[str]) -> dict[str, Any]:
    """Slice settings that prepare an external data root like the training data (strategy, image size).

    Read from the training manifest's ``cohort_summary.json``; the defaults where it is absent.
    """
    summary = Path(training_manifest).parent / "cohort_summary.json"
    settings: dict[str, Any] = {}
    if summary.is_file():
        values = json.loads(summary.read_text())
        settings = {k: values[k] for k in ("strategy", "image_size") if values.get(k) is not None}
    return settings


def predict_rows(model: Any, frame: pd.DataFrame, *, root: Path, split: str, image_size: int, batch_size: int,
                 device: Any) -> pd.DataFrame:
    """:func:`models.inference.predict.predict` over one split, or over every split for ``split="all"``."""
    from models.inference.predict import predict

    if split != "all":
        return predict(model, frame, root=root, split=split, image_size=image_size, batch_size=batch_size,
                       device=device)
    splits = [s for s in ("train", "validation", "test") if frame["split"].eq(s).any()]
    if not splits:
        raise ValueError("the external manifest holds no rows in any split")
    return pd.concat([predict(model, frame, root=root, split=s, image_size=image_size, batch_size=batch_size,
                              device=device) for s in splits], ignore_index=True)


def external_trivial(external: pd.DataFrame, *, own_manifest: str | os.PathLike[str],
                     external_manifest: str | os.PathLike[str], how: str = "max", n: int, ci: float,
                     seed: int) -> dict[str, Any] | None:
    """The trivial brightness score on the external images, beside the model (paired, per image).

    The score is chosen on the **training** collection's validation split (no look at the
    external images), then computed on every external image; ``None`` when that split lacks a class.
    """
    from tasks.evaluate.trivial_scores import choose_score, paired_auc_difference, score_images

    chosen = choose_score(pd.read_parquet(own_manifest), Path(own_manifest).parent)
    if chosen is None:
        return None
    table = external.reset_index(drop=True)
    table = table.assign(trivial=score_images(table, Path(external_manifest).parent)[chosen].to_numpy(float))
    paired = paired_auc_difference(table, "probability", "trivial", level="slice", how=how,  # type: ignore[arg-type]
                                   n=n, ci=ci, seed=seed)
    interval = paired["interval"]
    beats = None if paired["difference"] is None else bool((interval[0] if interval else paired["difference"]) > 0)
    return {"score": chosen, "chosen_on": "validation split of the training collection", "roc_auc": paired["second"],
            "model_roc_auc": paired["first"], "model_minus_trivial": paired["difference"],
            "difference_interval": interval, "beats_trivial": beats}


def external_comparison(own: pd.DataFrame, external: pd.DataFrame, *, source: str, threshold: float, n: int,
                        ci: float, seed: int, trivial: dict[str, Any] | None = None) -> dict[str, Any]:
    """The external figures beside the model's own test figures, and the gap (external - own) with intervals;
    ``trivial`` (:func:`external_trivial`) is the brightness score on the external images."""
    from tasks.evaluate.paired_bootstrap import gap_interval

    gap = gap_interval(own, external, threshold=threshold, n=n, ci=ci, seed=seed)
    probability = external["probability"].astype(float)
    labels = sorted(int(v) for v in external["label"].dropna().unique())
    return {
        "trivial": trivial,
        "source": source,
        "unit": "image",
        "own_test": {"images": int(len(own)), "patients": int(own["patient_id"].nunique()), "figures": gap["own"]},
        "external": {"images": int(len(external)), "patients": int(external["patient_id"].nunique()),
                     "figures": gap["other"], "labels": labels,
                     # Read beside the threshold: with one class, where the scores fall is what there is to see.
                     "score_distribution": {
                         "mean": float(probability.mean()), "min": float(probability.min()),
                         **{f"q{int(q * 100):02d}": float(probability.quantile(q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
                         "max": float(probability.max()),
                         "share_at_or_above_threshold": float((probability >= threshold).mean())},
                     "not_computable": {} if len(labels) > 1 else {
                         "roc_auc": f"the external collection holds one class only (label {labels[0] if labels else '-'}): "
                                    "AUC needs both; "
                                    + ("specificity is the figure" if labels == [0] else "sensitivity is the figure")}},
        "gap": {k: gap[k] for k in ("difference", "intervals", "n_valid", "bootstrap")},
    }
