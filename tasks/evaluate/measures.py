"""What evaluate-model computes, as plain functions: every figure of ``metrics.json``, and the report page.

The Prefect tasks ``compute-metrics`` and ``write-report`` (:mod:`tasks.evaluate.steps`) call these
and write their results; nothing here knows about Prefect.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.core.config import EvaluateConfig


def metrics_json(pred: pd.DataFrame, checkpoint: str, manifest: str, image_size: int,
                 cfg: EvaluateConfig, *, volume_frames: str | None = None, threshold_source: str = "",
                 threshold_choice: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything ``metrics.json`` holds for a trained run on a split.

    The figures of the predictions table alone (:func:`tasks.evaluate.metrics.evaluate_predictions`:
    slice, volume and patient level with intervals and nulls), then what needs the manifest's
    images or the model: the trivial baseline, the whole-volume level, Grad-CAM box hits and
    occlusion, each beside its reference or control.
    """
    from models.explain.controls import localisation_references, occlusion_control
    from models.explain.gradcam import box_hit_fraction
    from models.explain.occlusion import occlusion_check
    from models.training.checkpoint import load_classifier
    from models.training.engine import resolve_device
    from tasks.evaluate.metrics import evaluate_predictions
    from tasks.evaluate.trivial_scores import trivial_baseline

    metrics = evaluate_predictions(pred, how=cfg.aggregate, threshold=cfg.threshold, bootstrap=cfg.bootstrap,
                                   ci=cfg.ci, seed=cfg.seed, calibration_bins=cfg.calibration_bins)
    metrics["trivial"] = trivial_baseline(pred, pd.read_parquet(manifest), Path(manifest).parent, how=cfg.aggregate,
                                          bootstrap=cfg.bootstrap, ci=cfg.ci, seed=cfg.seed)
    metrics["threshold_source"] = threshold_source or "--threshold"
    metrics["threshold_choice"] = threshold_choice
    if volume_frames is not None:
        metrics["levels"]["whole_volume"] = whole_volume_entry(volume_frames, pred, metrics, cfg)
    model = load_classifier(checkpoint, device=resolve_device(cfg.device))
    positives = pred[pred["label"] == 1]
    metrics["localization"] = box_hit_fraction(model, positives, Path(manifest).parent, image_size,
                                               batch_size=cfg.batch_size)
    metrics["occlusion"] = occlusion_check(model, positives, Path(manifest).parent, image_size,
                                           threshold=cfg.threshold, batch_size=cfg.batch_size)
    # What the two checks would show by chance, by brightness, or by hiding any tissue.
    metrics["localization"]["references"] = localisation_references(positives, Path(manifest).parent, image_size)
    metrics["occlusion"]["control"] = occlusion_control(model, positives, Path(manifest).parent, image_size,
                                                        threshold=cfg.threshold, batch_size=cfg.batch_size,
                                                        seed=cfg.seed)
    return metrics


def pseudonymous_examples(examples: list[dict[str, Any]], out_path: Path) -> list[dict[str, Any]]:
    """The examples with keyed pseudonyms for their patient and study ids (view and slice kept).

    The salt is the one of the nearest folder above the report holding
    :data:`tasks.core.pseudonyms.SALT_FILE` (the output root, which ``tomoflow run`` salts
    first, so every page of one root names a patient alike), else the report's own folder.
    """
    from tasks.core.pseudonyms import SALT_FILE, pseudonym, root_salt

    folder = Path(out_path).resolve().parent
    salted = next((p for p in (folder, *folder.parents) if (p / SALT_FILE).is_file()), folder)
    salt = root_salt(salted)
    out = []
    for example in examples:
        ids = dict(example.get("ids") or {})
        if "patient_id" in ids:
            ids["patient_id"] = pseudonym(ids["patient_id"], salt, prefix="P-")
        if "study_uid" in ids:
            ids["study_uid"] = pseudonym(ids["study_uid"], salt, prefix="S-")
        out.append({**example, "ids": ids})
    return out


def whole_volume_entry(volume_frames: str, pred: pd.DataFrame, metrics: dict[str, Any],
                       cfg: EvaluateConfig) -> dict[str, Any]:
    """``levels.whole_volume``: the evaluated split's volumes over all their frames (or why it is missing)."""
    from tasks.evaluate.whole_volume import whole_volume_level

    frames = pd.read_parquet(volume_frames)
    split = str(pred["split"].iloc[0]) if len(pred) else cfg.split
    evaluated = frames[frames["split"].eq(split)]
    listed = pred.drop_duplicates(["patient_id", "study_uid", "view"])
    scored = evaluated.drop_duplicates(["patient_id", "study_uid", "view"])
    not_scored = {"not scored": int(len(listed) - len(scored))} if len(listed) > len(scored) else {}
    if evaluated.empty or evaluated["label"].nunique() < 1:
        return {"n": 0, "note": "no volume of the evaluated split could be read from its DICOM (see the log)",
                "volumes_not_scored": not_scored}
    return whole_volume_level(evaluated, threshold=float(metrics["threshold"]),
                              threshold_source=metrics["threshold_source"], stride=cfg.frame_stride, topk=cfg.topk,
                              trivial_score=(metrics.get("trivial") or {}).get("score"), bootstrap=cfg.bootstrap,
                              ci=cfg.ci, seed=cfg.seed, calibration_bins=cfg.calibration_bins,
                              n_listed=int(len(listed)), not_scored=not_scored)


def report_page(metrics: str, predictions: str, checkpoint: str, manifest: str, image_size: int, out_path: Path,
                train_conf: dict[str, Any], cfg: EvaluateConfig, generalization: dict[str, Any]) -> Path:
    """The self-contained report.html: curves, ROC, confusion, intervals, cohort flow, audit, Grad-CAM."""
    from models.explain.gradcam import gradcam_examples
    from models.training.checkpoint import load_classifier
    from models.training.engine import resolve_device
    from tasks.evaluate.metrics_chance import chance_losses
    from tasks.evaluate.report import write_report as render

    run = Path(cfg.run_dir)
    pred = pd.read_parquet(predictions)
    summary_path = Path(manifest).parent / "cohort_summary.json"
    model = load_classifier(checkpoint, device=resolve_device(cfg.device))
    examples = gradcam_examples(model, pred, root=Path(manifest).parent, image_size=image_size,
                                threshold=cfg.threshold, per_kind=cfg.gradcam_examples, seed=cfg.seed)
    # Chance on the learning curves: the manifest training read (offline-balanced or not) and its class weights.
    trained_on = Path(train_conf.get("manifest") or manifest)
    used = pd.read_parquet(manifest)
    chance = chance_losses(pd.read_parquet(trained_on) if trained_on.is_file() else used,
                           train_conf.get("train", {}).get("class_balance", "weights"),
                           aux_weight=0.4 if getattr(model, "aux_head", None) is not None else 0.0)
    if not cfg.show_ids:
        examples = pseudonymous_examples(examples, out_path)
    return render(
        run, metrics=json.loads(Path(metrics).read_text()), history=pd.read_csv(run / "history.csv"),
        cohort_summary=json.loads(summary_path.read_text()) if summary_path.is_file() else None,
        config={"train": train_conf, "evaluate": cfg.model_dump(mode="json")}, predictions=pred,
        examples=examples, out_path=out_path, chance=chance, manifest=used, generalization=generalization,
    )


def generalization_sections(checkpoint: str, audit: str | None, external: str | None) -> dict[str, Any]:
    """What the report shows of where the model started, the audit against its training data, and external data."""
    from models.training.checkpoint import read_checkpoint

    ckpt = read_checkpoint(checkpoint, advice="train again, or evaluate another run")
    return {
        "weights_source": ckpt.get("weights_source") if isinstance(ckpt, dict) else None,
        "training_audit": json.loads(Path(audit).read_text()) if audit else None,
        "external": json.loads(Path(external).read_text()) if external else None,
    }
