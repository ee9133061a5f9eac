"""prepare-data with a report export: report-derived cohorts, labels winning, no text leaking."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tasks.prepare.cohorts import cohorts_from_labels
from tasks.prepare.bcs_csv import load_bcs_tables
from tasks.core.config import DataConfig, PrepareConfig, SlicesConfig


def _config(data: Path, out: Path, *, reports: Path, use_labels: bool = True) -> PrepareConfig:
    return PrepareConfig(
        data=DataConfig(data_root=str(data), output_dir=str(out), reports=str(reports), use_labels=use_labels),
        slices=SlicesConfig(strategy="single-slice", image_size=32, executor="serial"),
    )


@pytest.fixture(scope="module")
def without_labels(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("no-labels") / "data"
    shutil.copytree(small_dataset, root)
    for csv in root.glob("*labels*.csv"):
        csv.unlink()
    return root


def _identifying_snippets(reports_csv: Path) -> list[str]:
    """Pieces of report text that would betray a leak: names, birth dates, record numbers, sentences."""
    texts = pd.read_csv(reports_csv, dtype=str)["text"].dropna()
    snippets: set[str] = set()
    for text in texts:
        snippets.update(re.findall(r"Patient: [^,\n]+", text))
        snippets.update(re.findall(r"DOB \d{4}-\d{2}-\d{2}", text))
        snippets.update(line.strip() for line in text.splitlines() if len(line.strip()) >= 25)
    assert len(snippets) > 20
    return sorted(snippets)


def _file_text(path: Path) -> str:
    if path.suffix == ".parquet":
        return pd.read_parquet(path).to_csv()
    return path.read_bytes().decode("latin-1")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_report_cohorts_without_labels_and_no_text_leaks(prefect_harness, small_dataset, without_labels,
                                                         tmp_path) -> None:
    from flows.prepare import prepare_data

    out = tmp_path / "out"
    collect = _Collect()
    loggers = [logging.getLogger(name) for name in ("prefect", "tasks", "models", "flows")]
    for logger in loggers:
        logger.addHandler(collect)
    try:
        result = prepare_data(config=_config(without_labels, out, reports=without_labels / "reports.csv"))
    finally:
        for logger in loggers:
            logger.removeHandler(collect)
    assert any("prepare-data" in m or "manifest" in m for m in collect.messages)
    summary = json.loads(Path(result["summary"]).read_text())
    assert summary["cohort_sources"] == ["reports"]
    assert summary["reports"]["read"] > summary["reports"]["kept"]["radiology"] > 0
    assert summary["reports"]["rejected"] == {"malformed report_date": 1, "unknown report_type": 1}

    # The report-derived tumour volumes are exactly the labels CSV's (side-specific pathology).
    truth, _ = cohorts_from_labels(load_bcs_tables(small_dataset).labels)
    volumes = pd.read_parquet(next((out / ".work" / "group-cohorts").glob("*/volumes.parquet")))
    key = ["patient_id", "study_uid", "view"]
    positive_truth = set(map(tuple, truth.loc[truth["label"] == 1, key].to_numpy()))
    positive_reports = set(map(tuple, volumes.loc[volumes["label"] == 1, key].to_numpy()))
    assert positive_reports == positive_truth
    manifest = pd.read_parquet(result["manifest"])
    assert set(manifest.loc[manifest["label"] == 1, "patient_id"]) == {k[0] for k in positive_truth}

    kept = pd.read_parquet(out / "reports_filtered.parquet")
    assert "text" not in kept.columns
    assert {"report_id", "patient_id", "study_uid", "report_type", "report_date"} <= set(kept.columns)
    rejects = pd.read_parquet(result["rejects"])
    assert rejects.loc[rejects["kind"] == "report", "report_id"].notna().all()

    snippets = _identifying_snippets(without_labels / "reports.csv")
    logged = "\n".join(collect.messages)
    leaks = []
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p.suffix != ".png"):
        text = _file_text(path)
        leaks += [f"{path.name}: {s[:30]}" for s in snippets if s in text]
    leaks += [f"log: {s[:30]}" for s in snippets if s in logged]
    assert leaks == []


def test_labels_win_and_disagreements_are_counted(prefect_harness, small_dataset, tmp_path) -> None:
    from flows.prepare import prepare_data

    out = tmp_path / "both"
    result = prepare_data(config=_config(small_dataset, out, reports=small_dataset / "reports.csv"))
    summary = json.loads(Path(result["summary"]).read_text())
    assert summary["cohort_sources"] == ["labels", "reports"]
    truth, _ = cohorts_from_labels(load_bcs_tables(small_dataset).labels)
    volumes = pd.read_parquet(next((out / ".work" / "group-cohorts").glob("*/volumes.parquet")))
    merged = volumes.merge(truth, on=["patient_id", "study_uid", "view"], suffixes=("", "_truth"))
    assert (merged["cohort"] == merged["cohort_truth"]).all()
    # Actionable studies: the labels mark one side, the BI-RADS-only reports the whole study.
    assert all(kind.startswith("labels=") for kind in summary["disagreements"])
    assert summary["disagreements"].get("labels=normal,reports=actionable", 0) >= 1
