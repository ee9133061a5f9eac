"""The ``tomoflow-pipeline`` run's configuration, settled before any work.

The merge (defaults < preset < deployment config < run config < paths) with every problem
as one line saying what to change (:func:`resolve_config`), and the fall-back to training
from scratch when ImageNet weights are not on this machine and the configuration allows it
(:func:`weights_or_scratch`).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from tasks.core.config import PipelineConfig
from tasks.core.presets import check_preset, explicit_settings, merge_config, pipeline_config
from tasks.infra.environment import (DATA_VAR, OUTPUT_VAR, ServiceConfigError, deployment_defaults, deployment_id,
                                     resolve_root, validation_message)


def resolve_config(config: PipelineConfig | dict[str, Any] | None, data_root: str | None, output_root: str | None,
                   preset: str | None) -> PipelineConfig:
    """The run's configuration, checked before any work; every problem is one line saying what to change.

    Order, later wins: the defaults, the preset, the deployment's stored ``config``, the
    run's ``config`` (merged into the deployment's, not replacing it), then ``data_root`` and
    ``output_root`` (or ``TOMOFLOW_DATA_ROOT`` / ``TOMOFLOW_OUTPUT_ROOT`` of the worker).

    Raises:
        ServiceConfigError: unknown preset, missing or wrong root, invalid setting.
    """
    if preset is not None:
        try:
            check_preset(preset)
        except ValueError as exc:
            raise ServiceConfigError(str(exc)) from None
    try:
        explicit = explicit_settings(config)
    except ValueError as exc:
        raise ServiceConfigError(str(exc)) from None
    stored = deployment_defaults("config") if deployment_id() is not None else None
    if isinstance(stored, dict):
        explicit = merge_config(stored, explicit)
    data = explicit.get("data") if isinstance(explicit.get("data"), dict) else {}
    in_deployment = deployment_id() is not None
    # A scheduled deployment carries no paths: the worker's environment says where the data is.
    data_root = resolve_root(data_root or data.get("data_root"), DATA_VAR, "data_root", "data root",
                             must_exist=True, deployment=in_deployment)
    output_root = resolve_root(output_root or data.get("output_dir"), OUTPUT_VAR, "output_root", "output root",
                               must_exist=False, deployment=in_deployment)
    try:
        return pipeline_config(preset=preset, data_root=data_root, output_root=output_root, base=explicit)
    except ValidationError as exc:
        raise ServiceConfigError(validation_message(exc)) from None


def weights_or_scratch(cfg: PipelineConfig) -> tuple[PipelineConfig, str | None]:
    """Keep the configured weights, or fall back to scratch (with a note) where allowed."""
    if cfg.model.weights.kind != "imagenet" or not cfg.scratch_if_no_weights:
        return cfg, None
    from models.weights.resolve import WeightsNotFoundError, resolve_weights

    try:
        resolve_weights(cfg.model.model, cfg.model.weights)
        return cfg, None
    except WeightsNotFoundError as exc:
        from tasks.core.presets import scratch_config

        scratch = scratch_config(cfg)
        rates = f"lr {scratch.train.lr:g}" + (
            f", backbone {scratch.train.lr * scratch.train.backbone_lr_factor:g}"
            if scratch.train.backbone_lr_factor != 1 else "")
        note = (f"ImageNet weights are not in torchvision's cache, so this run trains {scratch.model.model} FROM "
                f"SCRATCH ({scratch.train.optimizer}, {rates}; its figures are not transfer-learning "
                f"figures). {exc}")
        return scratch, note
