"""The report's example captions carry keyed pseudonyms, not patient or study ids."""

from __future__ import annotations

from pathlib import Path

from tasks.core.pseudonyms import SALT_FILE, pseudonym, root_salt
from tasks.evaluate.measures import pseudonymous_examples
from tasks.evaluate.metrics import evaluate_predictions
from tasks.evaluate.report import write_report
from tests.tasks.evaluate.test_report import CONFIG, COHORT_SUMMARY, HISTORY, _examples, _predictions


def test_report_examples_name_no_patient_by_default(tmp_path: Path) -> None:
    root = tmp_path / "output-root"
    salt = root_salt(root)  # what `tomoflow run` does first
    out = root / "runs" / "r1" / "evaluation" / "report.html"
    examples = pseudonymous_examples(_examples(), out)
    assert {e["ids"]["patient_id"] for e in examples} == {pseudonym("DBT-P00003", salt, prefix="P-")}
    assert examples[0]["ids"]["view"] == "rcc" and examples[0]["ids"]["slice_index"] == 4
    assert not (out.parent / SALT_FILE).exists()  # the root's salt, not a new one per report
    pred = _predictions()
    html = write_report(root / "runs" / "r1", metrics=evaluate_predictions(pred, bootstrap=0, seed=0),
                        history=HISTORY, cohort_summary=COHORT_SUMMARY, config=CONFIG, predictions=pred,
                        examples=examples, out_path=out).read_text(encoding="utf-8")
    assert "DBT-P" not in html and "DBT-S" not in html
    assert pseudonym("DBT-P00003", salt, prefix="P-") in html


def test_without_an_output_root_salt_the_report_folder_gets_one(tmp_path: Path) -> None:
    out = tmp_path / "run" / "report.html"
    examples = pseudonymous_examples(_examples(), out)
    assert (out.parent / SALT_FILE).is_file()
    assert examples[0]["ids"]["patient_id"] == pseudonym("DBT-P00003", root_salt(out.parent), prefix="P-")
    assert examples[0]["ids"]["study_uid"].startswith("S-")
