"""Named experiment presets (``configs/*.yaml``) loaded into the pipeline configuration."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml

from tasks.core.config import PipelineConfig

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"

#: The study's sequence, in the order the experiments command runs it.
STUDY_PRESETS = ("m1-baseline", "m1-augment", "m1-dense4", "m1-adam", "m2-baseline", "m2-inception",
                 "m2-inception-scratch")


#: The preset names, as a type: Prefect renders a parameter of this type as a choice in the
#: run form (and the API refuses other values when a deployment run is created). Spelled
#: out, not built from ``configs/`` at import, so the type is static; a test checks it
#: against the files.
PresetName = Literal["cpu-scratch", "demo", "m1-adam", "m1-augment", "m1-baseline", "m1-dense4", "m2-baseline",
                     "m2-inception", "m2-inception-scratch"]


def list_presets() -> list[str]:
    """Names of the presets in ``configs/``."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def check_preset(name: Any) -> str:
    """``name`` if it is a known preset.

    Raises:
        ValueError: a one-line message naming the value and listing the known presets.
    """
    known = list_presets()
    if not isinstance(name, str) or name not in known:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(known)} (the files in configs/)")
    return name


def load_preset(name: str) -> dict[str, Any]:
    """The preset's sections as a dict (without its ``description``).

    Raises:
        ValueError: unknown preset (the message lists the known ones) or malformed YAML.
    """
    path = CONFIGS_DIR / f"{check_preset(name)}.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections (slices, model, train, ...)")
    data.pop("description", None)
    return data


def preset_description(name: str) -> str:
    """The one-line description at the top of a preset."""
    path = CONFIGS_DIR / f"{name}.yaml"
    return str((yaml.safe_load(path.read_text()) or {}).get("description", name))


def merge_config(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` deep-merged over ``base``: sections merge key by key, other values replace."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge_config(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out




def explicit_settings(config: PipelineConfig | dict[str, Any] | None) -> dict[str, Any]:
    """The settings ``config`` gives explicitly, as a nested dict (a model's unset defaults left out)."""
    if isinstance(config, PipelineConfig):
        return config.model_dump(mode="json", exclude_unset=True)
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError(f"config must be a mapping of sections (data, slices, model, train, ...), "
                         f"not {type(config).__name__}")
    return dict(config)


def pipeline_config(
    *, preset: str | None = None, data_root: str | None = None, output_root: str | None = None,
    base: PipelineConfig | dict[str, Any] | None = None,
) -> PipelineConfig:
    """The pipeline configuration: the defaults, then the preset, then what ``base`` sets
    explicitly (an explicit setting wins over the preset), then the two paths."""
    merged: dict[str, Any] = load_preset(preset) if preset else {}
    merged = merge_config(merged, explicit_settings(base))
    data = dict(merged.get("data") or {})
    if data_root:
        data["data_root"] = str(data_root)
    if output_root:
        data["output_dir"] = str(output_root)
    merged["data"] = data
    return PipelineConfig.model_validate(merged)


def scratch_config(cfg: PipelineConfig) -> PipelineConfig:
    """The configuration of the from-scratch fallback: no starting weights, the scratch recipe.

    ``cfg.scratch_overrides`` (validated with the configuration) replaces the model, train
    and augment settings it names; for the ``demo`` preset that is the batch-normalised
    VGG16 with its backbone at a learning rate suited to random initialisation (10 times
    the head's), the BatchNorm statistics re-estimated before each validation. Everything else stays as configured.
    """
    merged = cfg.model_dump(mode="json")
    merged = merge_config(merged, {"model": {"weights": "none"}})
    merged = merge_config(merged, {k: dict(v) for k, v in cfg.scratch_overrides.items()})
    merged["model"]["weights"] = "none"
    return PipelineConfig.model_validate(merged)


def short_key(*parts: Any) -> str:
    """An 8-hex key of JSON-able parts (for content-addressed output folders)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]
