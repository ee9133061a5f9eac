"""An earlier tomoflow model as a starting point: ``--weights RUN_DIR`` or ``--weights RUN_DIR/best.pt``.

A tomoflow checkpoint holds a whole :class:`~models.nets.classifier.TumorClassifier` (backbone,
head, Inception's auxiliary head), not a torchvision ``state_dict``. :func:`load_source`
recognises one (a run folder holding ``best.pt`` or ``last.pt``, or such a file) and
:func:`apply_transfer` copies it into a freshly built classifier:

* ``transfer="backbone"``: the backbone only; the head starts from its usual random
  initialisation (a new task, or another head);
* ``transfer="all"`` (the default): the backbone and, when their keys and shapes match,
  the head and the auxiliary head, so the first forward pass equals the source model's.
  A head that doesn't match stops the run naming the difference (pass ``backbone``).

:func:`weights_source` is what the new run's checkpoints and report record about where it
started: for a tomoflow source its run folder, checkpoint and SHA-256, the source's
training-data fingerprint and its own test figures (its ``metrics.json``, when it was
evaluated).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from models.weights.resolve import WeightsArg, resolve_weights, unreadable_weights_message
from tasks.core.backbone_names import BackboneName
from tasks.core.digest import sha256_file
from tasks.core.weights_setting import WeightsSetting

__all__ = ["TransferMode", "apply_transfer", "load_source", "weights_source"]

TransferMode = Literal["backbone", "all"]
_FORMAT = "tomoflow-train/1"


def load_source(weights: WeightsArg) -> tuple[dict[str, Any], Path] | None:
    """The tomoflow checkpoint a ``run`` setting names, loaded safely (``weights_only=True``), or ``None``.

    Raises:
        ValueError: The file is not a tomoflow training checkpoint (named, with what it holds).
        FileNotFoundError: A run folder holding neither ``best.pt`` nor ``last.pt``.
    """
    if isinstance(weights, WeightsEnum):
        return None
    path = WeightsSetting.verify(weights).checkpoint()
    if path is None:
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ValueError(unreadable_weights_message(path, exc)) from None
    if not isinstance(ckpt, Mapping) or "model" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"weights '{path}' is not a tomoflow training checkpoint (no 'model' and 'model_config')")
    return dict(ckpt), path


def _prefixed(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _differences(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> list[str]:
    missing = [k for k in expected if k not in found and not k.endswith("num_batches_tracked")]
    extra = [k for k in found if k not in expected]
    shapes = [f"{k}: source {tuple(found[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in found and found[k].shape != v.shape]
    out = []
    for label, items in (("missing", missing), ("unexpected", extra), ("shape mismatches", shapes)):
        if items:
            out.append(f"{label} ({len(items)}): {items[:3]}")
    return out


def apply_transfer(model: nn.Module, ckpt: Mapping[str, Any], *, mode: TransferMode, source: Path) -> list[str]:
    """Copy a tomoflow checkpoint's backbone (and with ``mode="all"`` its heads) into ``model``.

    Args:
        model: A freshly built :class:`~models.nets.classifier.TumorClassifier`.
        ckpt: The source checkpoint (:func:`load_source`).
        mode: ``"backbone"`` or ``"all"``.
        source: The checkpoint's path, for messages.

    Returns:
        The parts loaded (``["backbone"]`` or ``["backbone", "head", ...]``).

    Raises:
        ValueError: Another backbone architecture, or (``all``) a head of other shape.
    """
    if mode not in ("backbone", "all"):
        raise ValueError(f"transfer {mode!r} is not one of ['all', 'backbone']")
    arch = ckpt["model_config"].get("model")
    if arch != model.arch:
        raise ValueError(
            f"weights '{source}' hold a {arch} model; this run builds {model.arch}: pass --model {arch} to start "
            "from it (the backbone architectures must match)"
        )
    state = ckpt["model"]
    backbone = _prefixed(state, "backbone.")
    target = model.backbone.state_dict()
    # A source trained at 299 px or more has Inception's AuxLogits; a smaller run doesn't use it.
    backbone = {k: v for k, v in backbone.items() if k in target or not k.startswith("AuxLogits.")}
    problems = _differences(target, backbone)
    if problems:
        raise ValueError(f"weights '{source}': the backbone does not fit this {model.arch}: " + "; ".join(problems))
    model.backbone.load_state_dict(backbone, strict=False)
    loaded = ["backbone"]
    if mode == "all":
        for part in ("head", "aux_head"):
            module = getattr(model, part, None)
            found = _prefixed(state, f"{part}.")
            if module is None:
                continue
            problems = _differences(module.state_dict(), found)
            if problems:
                raise ValueError(
                    f"weights '{source}': the {part} does not fit this run's ({model.config.get('head')} head, "
                    f"source: {ckpt['model_config'].get('head')}): " + "; ".join(problems)
                    + ". Pass --transfer backbone to start the head afresh, or --head "
                    f"{ckpt['model_config'].get('head')}."
                )
            module.load_state_dict(found)
            loaded.append(part)
    return loaded


def _evaluation_of(run_dir: Path) -> Path | None:
    """The ``metrics.json`` of a run's own evaluation: in its folder, its ``evaluation/`` folder, or (a model
    of ``tomoflow run``) the ``evaluation`` link of the pipeline run folder whose ``model`` link points at it."""
    for path in (run_dir / "metrics.json", run_dir / "evaluation" / "metrics.json"):
        if path.is_file():
            return path
    resolved = run_dir.resolve()
    runs = resolved.parent.parent / "runs"
    for link in sorted(runs.glob("*/model")) if runs.is_dir() else []:
        try:
            if link.resolve() == resolved and (link.parent / "evaluation" / "metrics.json").is_file():
                return link.parent / "evaluation" / "metrics.json"
        except OSError:
            continue
    return None


def _test_figures(run_dir: Path) -> dict[str, Any] | None:
    """The source run's own evaluation: image-level figures and intervals, and the trivial score beside them."""
    path = _evaluation_of(run_dir)
    if path is None:
        return None
    try:
        metrics = json.loads(path.read_text())
        level = metrics["levels"]["slice"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    keep = ("roc_auc", "accuracy", "sensitivity", "specificity")
    trivial = metrics.get("trivial") or {}
    floor = (trivial.get("levels") or {}).get("slice") or {}
    return {
        "split": metrics.get("split"),
        "n": level.get("n"),
        "metrics": {k: level.get("metrics", {}).get(k) for k in keep},
        "intervals": {k: (level.get("intervals") or {}).get(k) for k in keep},
        "null_roc_auc": level.get("null_roc_auc"),
        "trivial": {"score": trivial.get("score"), "roc_auc": floor.get("roc_auc"),
                    "model_minus_trivial": floor.get("model_minus_trivial"),
                    "difference_interval": floor.get("difference_interval"),
                    "beats_trivial": floor.get("beats_trivial")} if floor else None,
    }


def weights_source(model: BackboneName, weights: WeightsArg, transfer: TransferMode = "all") -> dict[str, Any]:
    """Where a run starts from, as its checkpoints and report record it.

    Returns:
        ``{"kind": "none"}``, ``{"kind": "imagenet", "file"}``, ``{"kind": "file", "path", "sha256"}``,
        or for a tomoflow model ``{"kind": "tomoflow", "run", "checkpoint", "sha256", "transfer",
        "model_config", "epoch", "training_data_fingerprint", "test_figures"}``.
    """
    setting = WeightsSetting.verify(weights) if not isinstance(weights, WeightsEnum) else None
    path = setting.checkpoint() if setting is not None else None
    if path is not None:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        training = ckpt.get("training_data") or {}
        return {
            "kind": "tomoflow",
            "run": str(path.parent),
            "checkpoint": str(path),
            "sha256": sha256_file(path),
            "transfer": transfer,
            "model_config": dict(ckpt.get("model_config") or {}),
            "epoch": ckpt.get("epoch"),
            "training_data_fingerprint": training.get("manifest_fingerprint") or ckpt.get("manifest_fingerprint"),
            "test_figures": _test_figures(path.parent),
        }
    resolved = resolve_weights(model, weights)
    if resolved is None:
        return {"kind": "none"}
    if setting is None or setting.kind == "imagenet":
        return {"kind": "imagenet", "file": str(resolved)}
    return {"kind": "file", "path": str(resolved), "sha256": sha256_file(resolved)}
