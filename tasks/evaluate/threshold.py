"""The operating threshold: chosen on the validation split at the whole-volume level, recorded in the run.

A deployment calls a volume tumour when its highest frame probability reaches the threshold,
so the threshold is chosen where that decision is made: on the **validation** volumes, each
scored over all its frames (max), never on the test split it is reported on. Two rules
(``EvaluateConfig.threshold_rule``):

* ``sensitivity`` (default): the highest threshold whose validation sensitivity is at least
  ``threshold_target`` (0.9): a screening tool that misses at most one cancer in ten, and
  otherwise recalls as few normal volumes as it can;
* ``youden``: the threshold that maximises sensitivity + specificity - 1 (Youden's J).

The choice is written to ``threshold.json`` in the evaluation folder and in the run folder,
where ``tomoflow score`` reads it. ``--threshold`` overrides it everywhere and the outputs say so.
Without validation volumes of both classes the fixed 0.5 is used and ``source`` says why.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.config import EvaluateConfig
from tasks.core.files import atomic_write_json

#: The file a run's chosen threshold is recorded in.
THRESHOLD_NAME = "threshold.json"
#: The threshold when nothing was chosen.
DEFAULT_THRESHOLD = 0.5
RULES = ("sensitivity", "youden")


def _clip(value: float) -> float:
    """A threshold strictly inside (0, 1), as the configuration requires."""
    return float(min(max(value, 1e-6), 1.0 - 1e-6))


def choose_threshold(labels: Any, scores: Any, *, rule: str = "sensitivity", target: float = 0.9) -> dict[str, Any]:
    """The threshold by ``rule`` on ``(labels, scores)`` (one per validation volume) and its rates there.

    Returns:
        ``threshold``, ``rule``, ``target`` (with ``sensitivity``), ``sensitivity`` and
        ``specificity`` at it, ``n_positive``, ``n_negative``; ``threshold`` is None (with
        ``reason``) when a class is missing.
    """
    if rule not in RULES:
        raise ValueError(f"threshold rule {rule!r} is not one of {list(RULES)}")
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(scores, dtype=np.float64)
    out: dict[str, Any] = {"rule": rule, "target": float(target) if rule == "sensitivity" else None,
                           "n_positive": int((y == 1).sum()), "n_negative": int((y == 0).sum()),
                           "threshold": None, "sensitivity": None, "specificity": None, "reason": None}
    if out["n_positive"] == 0 or out["n_negative"] == 0:
        out["reason"] = "the validation volumes lack a class: no threshold can be chosen on them"
        return out
    if rule == "sensitivity":
        positives = np.sort(p[y == 1])[::-1]
        needed = max(1, math.ceil(float(target) * len(positives) - 1e-9))
        t = float(positives[needed - 1])
    else:
        from sklearn.metrics import roc_curve  # not at import: the evaluate flow module imports this one

        fpr, tpr, thresholds = roc_curve(y, p)
        best = int(np.argmax(tpr - fpr))
        t = float(thresholds[best]) if np.isfinite(thresholds[best]) else float(p.max())
    t = _clip(t)
    out["threshold"] = t
    out["sensitivity"] = float((p[y == 1] >= t).mean())
    out["specificity"] = float((p[y == 0] < t).mean())
    return out


def recorded_threshold(run_dir: str | os.PathLike[str]) -> tuple[float, str]:
    """``(threshold, source)`` recorded in a run folder, else the default 0.5 and why."""
    path = Path(run_dir) / THRESHOLD_NAME
    if path.is_file():
        try:
            values = json.loads(path.read_text())
            if values.get("threshold") is not None:
                return float(values["threshold"]), str(values.get("source") or path.name)
        except (OSError, ValueError, TypeError):
            pass
    return DEFAULT_THRESHOLD, ("the default 0.5: no threshold recorded in the run "
                               "(tomoflow evaluate chooses one on the validation volumes)")


def operating_threshold(choice: dict[str, Any] | None, override: float | None) -> tuple[float, str]:
    """``(threshold, source)`` of an evaluation: ``--threshold``, else the validation choice, else 0.5."""
    if override is not None:
        return float(override), "--threshold (overrides the threshold chosen on validation)"
    if choice and choice.get("threshold") is not None:
        what = (f"sensitivity >= {choice['target']:g}" if choice["rule"] == "sensitivity" else "Youden's J")
        return float(choice["threshold"]), f"chosen on the validation volumes (whole volume, max; {what})"
    reason = (choice or {}).get("reason") or "no validation volumes were scored"
    return DEFAULT_THRESHOLD, f"the default 0.5 ({reason})"


def choose_operating_threshold(cfg: EvaluateConfig, volume_frames: str | None, run_dir: Path, out: Path,
                               own_manifest: bool) -> tuple[float, str, dict[str, Any] | None]:
    """The operating threshold, where it came from, and the validation choice (written to threshold.json)."""
    import pandas as pd

    from tasks.evaluate.whole_volume import volume_scores
    from tasks.infra.lifecycle import run_logger

    choice = None
    if volume_frames is not None:
        frames = pd.read_parquet(volume_frames)
        val = frames[frames["split"].eq("validation")]
        if len(val):
            units = volume_scores(val, cfg.topk)
            choice = choose_threshold(units["label"], units["max"], rule=cfg.threshold_rule,
                                      target=cfg.threshold_target)
        else:
            choice = {"threshold": None, "reason": "no validation volume could be scored"}
    if choice is None and cfg.threshold is None:
        value, source = recorded_threshold(run_dir)  # an external evaluation: the run's own choice
    else:
        value, source = operating_threshold(choice, cfg.threshold)
    record = {"threshold": value, "source": source, "level": "whole_volume", "combine": "max",
              "frame_stride": cfg.frame_stride, "choice": choice}
    atomic_write_json(out / THRESHOLD_NAME, record)
    if own_manifest and cfg.threshold is None and choice and choice.get("threshold") is not None:
        atomic_write_json(run_dir / THRESHOLD_NAME, record)  # what tomoflow score reads
    run_logger(__name__).info("operating threshold %.4f: %s", value, source)
    return value, source, choice
