"""Configuration of the ``score-studies`` flow (``tomoflow score``, the ``score-new`` deployment)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tasks.core.config import _Frozen


class ScoreConfig(_Frozen):
    """Configuration of the ``score-studies`` flow: a trained run over every frame of new studies."""

    run_dir: str | None = Field(None, description="Training run folder (tomoflow train --out RUN): its checkpoint, "
                                "the sizes it trained at and the threshold its evaluation chose; default: the "
                                "worker's TOMOFLOW_SCORE_RUN.")
    data_root: str | None = Field(None, description="Folder of the studies to score: BCS-DBT file-paths CSVs when "
                                  "present, else every DICOM file under it (identified from its header); no labels "
                                  "needed. Default: the worker's TOMOFLOW_SCORE_DATA_ROOT, else TOMOFLOW_DATA_ROOT.")
    output_dir: str | None = Field(None, description="Where frame_scores.parquet, volumes.parquet, worklist.csv, "
                                   "worklist.html and score_summary.json go; default: TOMOFLOW_OUTPUT_ROOT/scores.")
    stride: int = Field(1, ge=1, description="Score every K-th frame of each volume (1: every frame).")
    topk: int = Field(3, ge=1, description="Frames averaged by score_topk (the mean of the k highest).")
    threshold: float | None = Field(None, gt=0, lt=1, description="Operating threshold; default: the one the run's "
                                    "evaluation chose on validation (threshold.json), else 0.5.")
    batch_size: int = Field(32, ge=1, description="Frames per forward pass (and per decode chunk).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="The device: auto uses CUDA when available.")
    workers: int | None = Field(None, ge=0, description="Decode worker processes (0: decode in the model's process; "
                                "default: one per core but one, at most 4).")
    autocast: bool = Field(False, description="bf16 autocast on CUDA for the forward pass.")
