"""Configuration objects: one frozen pydantic model per flow, grouped by concern.

Every field has a default and a description, so the Prefect UI renders each flow's
configuration as a form, the CLI fills it from options and ``prefect.yaml`` from
parameters. Validation happens here, before any work starts.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tasks.core.backbone_names import BackboneName
from tasks.core.schema import Strategy
from tasks.core.split_fractions import check_split_fractions
from tasks.core.weights_setting import WeightsSetting

#: Bumped whenever a change alters what a cached step would produce.
CODE_VERSION = "tomoflow-0.1.0/cache-4"  # 2: single-slice one image per patient; null/occlusion metrics; 3: reduced decode; 4: label-first splits, scratch recipe


#: Split fractions, checked by :func:`check_split_fractions`.
SplitFractions = Annotated[tuple[float, float, float], BeforeValidator(check_split_fractions)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Frozen):
    """Where the inputs are and where the outputs go."""

    data_root: str = Field(
        "data",
        description="Folder holding the BCS-DBT CSVs (file paths, labels, boxes) and the "
        "Breast-Cancer-Screening-DBT image folder (or a folder above it).",
    )
    extra_data_roots: tuple[str, ...] = Field(
        (), description="Folders besides the data root that the file-paths CSVs' absolute paths may point "
        "into (e.g. the mount holding the collection). Repeatable. A CSV path elsewhere, or climbing out "
        "with '..', is rejected as outside-data-root; symlinks inside the data root are followed.",
    )
    output_dir: str = Field("output", description="Folder for the manifest, slices and audit files.")
    reports: str | None = Field(
        None,
        description="Optional report export (CSV or Parquet with report_id, patient_id, study_uid, "
        "report_type, report_date, text) to derive cohorts from.",
    )
    use_labels: bool = Field(
        True, description="Use the BCS-DBT labels CSV when present (it wins over report-derived cohorts)."
    )
    max_reject_fraction: float = Field(
        0.10, ge=0.0, le=1.0,
        description="Stop (failed, with the counts by reason) when more than this share of the volumes "
        "listed in the file-paths CSVs is rejected for a fault (no label, missing or unreadable file, ...); "
        "1.0 accepts any share. Actionable, not-selected and no-report volumes do not count.",
    )


class SlicesConfig(_Frozen):
    """Which frames become training images, how they are split and how they are extracted."""

    strategy: Strategy = Field(
        "all-slices",
        description="Which frames become images: all-slices takes every frame of positive volumes and a sample "
        "of normal frames (study method 1); single-slice takes exactly one image per patient, the boxed frame of "
        "a positive patient's largest lesion or one seeded frame of one normal view (method 2); lesion-slices "
        "takes every boxed frame, and its neighbours count as positive.",
    )
    image_size: int = Field(224, ge=32, le=2048, description="Side of the square, letterboxed PNG in pixels.")
    require_both_classes: bool = Field(
        True, description="Stop before extraction when a split would lack tumour or normal images. Off only for a "
        "collection prepared to evaluate on (evaluate --external): all-normal screening data is common; its "
        "evaluation reports specificity and the score distribution, with AUC not computable.",
    )
    normal_fraction: float = Field(
        0.15, gt=0.0, le=1.0, description="Fraction of each normal volume's frames sampled (all-slices, lesion-slices)."
    )
    lesion_window: int = Field(
        2, ge=0, le=50, description="Frames either side of a box's Slice that count as lesion frames."
    )
    seed: int = Field(0, description="Seed for every random choice (frame sampling, splits).")
    split_fractions: SplitFractions = Field(
        (0.7, 0.15, 0.15), description="Train, validation, test fractions of patients."
    )
    full_resolution: bool = Field(
        False,
        description="Decode every frame in full. By default JPEG 2000 breast images are decoded at the "
        "coarsest stored resolution level that still covers image_size (up to 16x faster; the level "
        "is recorded per row in the manifest's decode_level).",
    )
    shard_size: int = Field(8, ge=1, le=10_000, description="Volumes per extraction task.")
    workers: int | None = Field(
        None, ge=1, description="Extraction processes; default: the machine's CPU count."
    )
    executor: Literal["process", "serial", "dask"] = Field(
        "process",
        description="Where extraction runs: process is a local process pool; serial runs in the flow's process "
        "(for debugging); dask uses prefect-dask's DaskTaskRunner, on the scheduler of the slices.dask_address "
        "setting (a LocalCluster when none).",
    )
    dask_address: str | None = Field(
        None, description="Address of an existing Dask scheduler; none starts a LocalCluster."
    )

    @field_validator("split_fractions")
    @classmethod
    def _fractions_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if v[0] <= 0:  # the rest is check_split_fractions
            raise ValueError(
                f"split_fractions {v}: need three non-negative fractions (train > 0) that sum to 1"
            )
        return v


class ReportsConfig(_Frozen):
    """DEDUCE-style report filtering and report-derived cohorts."""

    encoding: str = Field(
        "auto",
        description="Text encoding of a CSV report export: auto (UTF-8, with or without a byte-order mark, "
        "or UTF-16 with one) or a Python codec name such as cp1252. A row that does not decode is rejected "
        "alone, naming the file and row.",
    )
    radiology_type: str = Field("radiology", description="report_type value of radiology reports.")
    pathology_type: str = Field("pathology", description="report_type value of pathology reports.")
    radiology_terms: tuple[str, ...] = Field(
        ("tomosynthesis",), description="A radiology report is kept if it contains one of these whole words."
    )
    pathology_terms: tuple[str, ...] = Field(
        ("breast",), description="A pathology report is kept if it contains one of these whole words."
    )
    start_date: dt.date = Field(dt.date(2014, 1, 1), description="First report date kept (inclusive).")
    end_date: dt.date = Field(dt.date(2018, 1, 30), description="Last report date kept (inclusive).")
    pathology_window_days: int = Field(
        180, ge=0, description="Pathology dated 0..N days after a radiology report belongs to it."
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        import codecs

        if v != "auto":
            try:
                codecs.lookup(v)
            except LookupError:
                raise ValueError(f"encoding {v!r} is not a known text encoding (auto, utf-8, cp1252, latin-1, ...)")
        return v

    @model_validator(mode="after")
    def _dates_ordered(self) -> "ReportsConfig":
        if self.end_date < self.start_date:
            raise ValueError(f"end_date {self.end_date} is before start_date {self.start_date}")
        return self


class PrepareConfig(_Frozen):
    """Configuration of the ``prepare-data`` flow."""

    data: DataConfig = Field(default_factory=DataConfig, description="Inputs and outputs.")
    slices: SlicesConfig = Field(default_factory=SlicesConfig, description="Slice selection and extraction.")
    reports: ReportsConfig = Field(default_factory=ReportsConfig, description="Report filtering rules.")


class ModelConfig(_Frozen):
    """The network: backbone, its starting weights and the new dense head."""

    model: BackboneName = Field(
        "vgg16", description="The torchvision backbone; vgg16_bn is VGG16 with batch normalisation (the from-scratch "
        "baseline); resnet18 is the cheaper backbone the cpu-scratch preset trains on the CPU."
    )
    weights: WeightsSetting = Field(
        "imagenet", validate_default=True,  # parsed once (WeightsSetting.verify); dumped as the text given
        description="Starting weights: imagenet (torchvision's cache, $TORCH_HOME/hub/checkpoints), none (from "
                    "scratch), "
        "a tomoflow run folder or its best.pt (an earlier model as the starting point), or a path to a "
        "state_dict file.",
    )
    transfer: Literal["backbone", "all"] = Field(
        "all",
        description="With weights from a tomoflow run: all loads the backbone and the head (they must match "
        "this run's; the first forward pass equals the source model's), backbone loads the backbone only and "
        "starts the head afresh.",
    )
    head: Literal["single", "dense4"] = Field(
        "single", description="The head: single is one dense layer of 100 units; dense4 is four, of 8192, 2048, 512 "
                              "and 128 units."
    )
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout in the head.")


class TrainParams(_Frozen):
    """Optimisation, schedule and hardware."""

    optimizer: Literal["sgd", "adam"] = Field("sgd", description="SGD with momentum (the study) or Adam.")
    lr: float = Field(0.001, gt=0, description="Learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    batch_size: int = Field(64, ge=1, description="Images per batch.")
    epochs: int = Field(10, ge=1, description="Maximum number of epochs.")
    patience: int | None = Field(
        20, ge=1, description="Early stopping: epochs without a better validation loss; none disables it."
    )
    min_steps: int = Field(
        0, ge=0, description="Early stopping waits for at least this many optimiser steps, so a small training "
        "set is not stopped before it had the chance to learn (epochs still caps the run)."
    )
    freeze_epochs: int = Field(0, ge=0, description="Epochs with the backbone frozen before fine-tuning.")
    unfreeze_lr_factor: float = Field(
        0.1, gt=0, le=1, description="Backbone learning rate after unfreezing, as a fraction of lr."
    )
    backbone_lr_factor: float = Field(
        1.0, gt=0, le=100,
        description="Backbone learning rate as a multiple of lr while it trains (1: the study's one rate). "
        "A batch-normalised backbone trained from scratch takes a rate about 10 times what the new dense "
        "head (25088 inputs for VGG16) can take without its outputs blowing up.",
    )
    class_balance: Literal["weights", "sampler", "none"] = Field(
        "weights", description="Counter the rare positive class by loss weighting or a balanced sampler."
    )
    image_size: int = Field(224, ge=32, le=1024, description="Network input side (224, 299, 500).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="The device: auto uses CUDA when available.")
    multi_gpu: bool = Field(
        True, description="With more than one visible GPU, train on all of them with torchrun (DDP)."
    )
    num_workers: int | None = Field(None, ge=0, description="DataLoader workers; default from the CPU count.")
    seed: int = Field(0, description="Seed for initialisation, shuffling, dropout and augmentation.")
    max_batches: int | None = Field(
        None, ge=1, description="Cap on batches per epoch (smoke tests and demos only)."
    )
    recalibrate_bn: bool = Field(
        False,
        description="Before each validation, re-estimate the BatchNorm running statistics over the training "
        "images with the epoch's final weights (precise BN). A network trained from scratch with few steps "
        "per epoch otherwise validates with statistics that lag its weights by dozens of steps and looks "
        "like chance for epochs after it has learned; no effect on networks without BatchNorm.",
    )


class AugmentConfig(_Frozen):
    """Augmentation, online during training and offline for class balancing."""

    online: bool = Field(True, description="Random flips, rotations, zoom, shifts and brightness in training.")
    flip_p: float = Field(0.5, ge=0, le=1, description="Probability of each horizontal and vertical flip.")
    max_rotation: float = Field(90.0, ge=0, le=180, description="Rotations up to this many degrees.")
    zoom: tuple[float, float] = Field((0.9, 1.1), description="Zoom (scale) range.")
    shift: float = Field(0.1, ge=0, le=0.5, description="Shifts up to this fraction of the side.")
    brightness: float = Field(0.2, ge=0, le=1, description="Brightness jitter.")
    offline_balance: bool = Field(
        False, description="Write augmented copies of training positives until there are augment.target_ratio "
        "positives per negative (single-slice)."
    )
    target_ratio: float = Field(
        1.0, gt=0, le=1, description="Offline balancing: positives per negative in the training split."
    )

    @field_validator("zoom")
    @classmethod
    def _zoom_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 < lo <= hi:
            raise ValueError(f"augment.zoom {tuple(v)!r}: need 0 < min <= max, e.g. (0.9, 1.1)")
        return v


class TrainConfig(_Frozen):
    """Configuration of the ``train-classifier`` flow."""

    manifest: str = Field("output/manifest.parquet", description="The manifest.parquet that prepare-data wrote.")
    run_dir: str = Field("runs/run", description="Folder for checkpoints, history and the config.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Network.")
    train: TrainParams = Field(default_factory=TrainParams, description="Optimisation.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Augmentation.")


class EvaluateConfig(_Frozen):
    """Configuration of the ``evaluate-model`` flow."""

    run_dir: str = Field("runs/run", description="Training run folder (best.pt, history.csv, config.json).")
    manifest: str | None = Field(None, description="Manifest to evaluate on; default: the one the run trained on.")
    output_dir: str | None = Field(
        None, description="Where predictions, metrics and the report go; default: the run folder."
    )
    split: Literal["train", "validation", "test"] = Field("test", description="Split to evaluate.")
    aggregate: Literal["max", "mean"] = Field(
        "max", description="How slice probabilities become volume and patient probabilities."
    )
    threshold: float | None = Field(None, gt=0, lt=1, description="Probability at or above which a case is called "
                                    "tumour; default: chosen on the validation volumes (threshold_rule), else 0.5.")
    threshold_rule: Literal["sensitivity", "youden"] = Field(
        "sensitivity", description="How the operating threshold is chosen on the validation volumes, each scored over "
        "all its frames (max): the highest with sensitivity >= threshold_target, or Youden's J.")
    threshold_target: float = Field(0.9, gt=0, le=1, description="The sensitivity the threshold_rule sensitivity "
                                                                 "keeps.")
    frame_stride: int = Field(1, ge=1, description="Whole-volume level: every K-th frame of each volume is scored.")
    topk: int = Field(3, ge=1, description="Whole-volume level: frames averaged by the top-k mean.")
    data_root: str | None = Field(None, description="Folder the manifest's source_path values are relative to "
                                  "(the data root prepare read); the whole-volume level reads the DICOMs there. Default: the one "
                                  "the prepared folder's cohort_summary.json records.")
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples of patients for the 95% intervals (0: none).")
    ci: float = Field(0.95, gt=0, lt=1, description="Confidence level of the intervals.")
    seed: int = Field(0, description="Seed of the bootstrap and of the example selection.")
    gradcam_examples: int = Field(3, ge=0, le=20, description="Grad-CAM examples per kind (TP, FP, FN) in the report.")
    batch_size: int = Field(64, ge=1, description="Inference batch size.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="The device: auto uses CUDA when available.")
    calibration_bins: int = Field(10, ge=2, le=50, description="Bins of the reliability diagram.")
    allow_overlap: bool = Field(
        False,
        description="Evaluate even when the evaluated rows hold patients, studies or images the model trained "
        "or was validated on (the checkpoint records them); the overlap is then reported in the leak audit. "
        "Off: such an evaluation stops, naming the counts.",
    )
    external: str | None = Field(
        None,
        description="Evaluate on another collection: a manifest.parquet, a prepared folder, or a BCS-DBT-shaped "
        "data root (prepared like the training data). The report sets its figures beside the model's own test "
        "figures, with the gap and its bootstrap interval. Default output: RUN/external.",
    )
    show_ids: bool = Field(
        False, description="Caption the report's example slices with the real patient and study ids (a report "
        "kept inside the hospital). Off: keyed pseudonyms (P-..., S-...) of the output root's salt, so a served "
        "or shared report names no patient.",
    )
    external_split: Literal["all", "train", "validation", "test"] = Field(
        "all", description="Which rows of the external collection to evaluate (all: every split)."
    )


class PipelineConfig(_Frozen):
    """Configuration of the ``tomoflow-pipeline`` flow: prepare, train and evaluate in one form.

    Paths inside the sections that the pipeline derives (the prepared folder, the training
    run folder, the manifest) are filled in by the pipeline from ``data``.
    """

    data: DataConfig = Field(default_factory=DataConfig, description="Inputs, and the output root.")
    slices: SlicesConfig = Field(default_factory=SlicesConfig, description="Slice selection and extraction.")
    reports: ReportsConfig = Field(default_factory=ReportsConfig, description="Report filtering rules.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Network.")
    train: TrainParams = Field(default_factory=TrainParams, description="Optimisation.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Augmentation.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Evaluation.")
    scratch_if_no_weights: bool = Field(
        False,
        description="If the ImageNet weights file is not in torchvision's cache, train from scratch with a "
        "logged note instead of stopping (the demo preset does; real runs should not).",
    )
    scratch_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="With scratch_if_no_weights, the settings that replace model / train / augment ones when "
        "the run falls back to training from scratch, e.g. {model: {model: vgg16_bn}, train: "
        "{backbone_lr_factor: 10, recalibrate_bn: true}}: a recipe that learns from random initialisation. A run with ImageNet weights "
        "keeps the settings above (the study's).",
    )
    train_deployment: str | None = Field(
        None,
        description="Run training as this deployment (e.g. train-classifier/gpu-train, in the GPU work "
        "pool) with run_deployment; none runs it as a subflow in this process.",
    )

    @model_validator(mode="after")
    def _scratch_overrides_fit(self) -> "PipelineConfig":
        sections = {"model": ModelConfig, "train": TrainParams, "augment": AugmentConfig}
        unknown = sorted(set(self.scratch_overrides) - set(sections))
        if unknown:
            raise ValueError(
                f"scratch_overrides: sections {unknown} are not allowed; allowed: {sorted(sections)}"
            )
        for name, values in self.scratch_overrides.items():
            # Checked now, so a bad recipe stops the run before any work, not at the fallback.
            try:
                sections[name].model_validate({**getattr(self, name).model_dump(), **values})
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}" for e in exc.errors()
                )
                raise ValueError(f"scratch_overrides.{name}: {problems}") from None
        return self
