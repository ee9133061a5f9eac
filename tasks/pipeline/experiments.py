"""Planning ``tomoflow experiments``: the presets' effective configurations, checked before any work.

:func:`plan_experiments` turns preset names and the command's overrides into the runs to
make: each preset's configuration with the overrides over it, its starting weights resolved
(``--weights none``: from scratch, with the preset's own scratch recipe where it has one and
the demo's for VGG16 presets without one;
otherwise ImageNet weights must be in torchvision's cache, checked here, before any data is
prepared), and presets whose effective configurations are then equal merged into one run.
"""

from __future__ import annotations

from typing import Any

from tasks.infra.lifecycle import run_logger
from tasks.pipeline.comparison import group_presets
from tasks.core.config import PipelineConfig
from tasks.core.presets import STUDY_PRESETS, check_preset, load_preset, merge_config, pipeline_config

__all__ = ["experiment_overrides", "plan_experiments"]

#: ``--weights`` values of the preset comparison (a tomoflow run or checkpoint starts a training-size sweep).
WEIGHTS_CHOICES = ("preset", "none")


def experiment_overrides(*, epochs: int | None = None, image_size: int | None = None,
                         max_batches: int | None = None) -> dict[str, Any]:
    """Settings over every preset from the command's options (``None``: the preset's own).

    ``image_size`` sets both the prepared PNG side and the network input, so a small run
    neither writes nor reads large images.
    """
    out: dict[str, Any] = {}
    train: dict[str, Any] = {}
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f"--epochs {epochs}: expected at least 1")
        train["epochs"] = epochs
    if image_size is not None:
        if not 32 <= image_size <= 1024:
            raise ValueError(f"--image-size {image_size}: expected 32 to 1024 pixels")
        train["image_size"] = image_size
        out["slices"] = {"image_size": image_size}
    if max_batches is not None:
        if max_batches < 1:
            raise ValueError(f"--max-batches {max_batches}: expected at least 1")
        train["max_batches"] = max_batches
    if train:
        out["train"] = train
    return out


def _resolve_weights(name: str, cfg: PipelineConfig, weights: str) -> tuple[PipelineConfig, str | None]:
    """The configuration with its starting weights settled, or a one-line error before any work."""
    from tasks.pipeline.run_config import weights_or_scratch
    from tasks.core.presets import scratch_config

    if weights == "none":
        if cfg.model.weights.kind == "none":
            return cfg, None
        if not cfg.scratch_overrides and cfg.model.model == "vgg16":
            # Plain VGG16 sits at chance for many epochs from random initialisation: the demo's
            # scratch recipe (batch normalisation, a faster backbone) is the from-scratch VGG16.
            recipe = load_preset("demo").get("scratch_overrides") or {}
            cfg = cfg.model_copy(update={"scratch_overrides": recipe})
        scratch = scratch_config(cfg)
        return scratch, (f"trained from scratch (--weights none): {scratch.model.model}, "
                         f"backbone lr x{scratch.train.backbone_lr_factor:g}; not transfer-learning figures")
    cfg, note = weights_or_scratch(cfg)
    from models.weights.resolve import resolve_weights

    try:
        resolve_weights(cfg.model.model, cfg.model.weights)
    except (FileNotFoundError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"preset {name}: its starting weights ({cfg.model.model}, {cfg.model.weights}) are not "
                         f"available: {first} Pass --weights none to train every preset from scratch.") from None
    return cfg, note


def _fit_input_size(cfg: PipelineConfig) -> tuple[PipelineConfig, str | None]:
    """The network input raised to the backbone's minimum (Inception: 75 px) when a small run asks for less.

    A small ``--image-size`` is meant for every preset; Inception cannot take it, and stopping
    after the VGG16 presets have run would lose the comparison. Its prepared images and network
    input both become the minimum, and the row's note says so.
    """
    from models.weights.resolve import backbone_spec

    minimum = backbone_spec(cfg.model.model).min_size
    if cfg.train.image_size >= minimum:
        return cfg, None
    train = cfg.train.model_copy(update={"image_size": minimum})
    slices = cfg.slices.model_copy(update={"image_size": max(cfg.slices.image_size, minimum)})
    return cfg.model_copy(update={"train": train, "slices": slices}), (
        f"images and network input {minimum} px, {cfg.model.model}'s minimum (asked {cfg.train.image_size} px)")


def plan_experiments(
    presets: list[str] | None, *, data_root: str, output_root: str, overrides: dict[str, Any] | None = None,
    weights: str = "preset",
) -> list[tuple[list[str], PipelineConfig, str | None]]:
    """The runs of ``tomoflow experiments``: ``(preset names, configuration, note)``, in preset order.

    Args:
        presets: Preset names; default: the study's sequence (:data:`tasks.core.presets.STUDY_PRESETS`).
        data_root, output_root: The paths of every run.
        overrides: Settings over every preset (:func:`experiment_overrides`).
        weights: ``"preset"`` (each preset's weights, which must be available unless the preset
            falls back to scratch) or ``"none"`` (every preset from scratch).

    Raises:
        ValueError: an unknown preset, a bad setting, or starting weights that are not here; the
            message names the preset and what to do.
    """
    if weights not in WEIGHTS_CHOICES:
        raise ValueError(f"--weights {weights!r}: expected one of {', '.join(WEIGHTS_CHOICES)}")
    planned = []
    for name in presets or STUDY_PRESETS:
        merged = merge_config(load_preset(check_preset(name)), overrides or {})
        cfg = pipeline_config(data_root=data_root, output_root=output_root, base=merged)
        cfg, note = _resolve_weights(name, cfg, weights)
        cfg, size_note = _fit_input_size(cfg)
        planned.append((name, cfg, "; ".join(n for n in (note, size_note) if n) or None))
    runs = group_presets(planned)
    for names, _, _ in runs:
        if len(names) > 1:
            run_logger(__name__).info("presets %s have the same effective configuration: one run, one row",
                                      ", ".join(names))
    return runs
