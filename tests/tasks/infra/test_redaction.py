"""Log records and warnings never carry report text or DICOM identifying values."""

from __future__ import annotations

import logging
import warnings

from tasks.infra.redaction import install, redact, register_sensitive


def test_redact_patterns() -> None:
    decode = ("'utf-8' codec can't decode byte 0xff in position 12: invalid start byte "
              "b'Johanna Quixote DOB 1957-03-14 MRN 44175521\\xff'")
    assert "Quixote" not in redact(decode) and "0xff in position 12" in redact(decode)
    element = "(0010,0010) Patient's Name                      PN: 'Quixote^Johanna'"
    assert redact(element).startswith("(0010,0010) Patient's Name") and "Quixote" not in redact(element)
    assert "19570314" not in redact("Invalid value for VR DA in PatientBirthDate: '19570314x'")
    assert "Quixote" not in redact("Pandas(report_id='R1', text='Johanna Quixote was seen')")
    assert redact("DBT-P00013/DBT-S00163/rcc: 3 frames") == "DBT-P00013/DBT-S00163/rcc: 3 frames"


def test_installed_filter_covers_tomoflow_prefect_and_library_loggers_and_warnings(caplog) -> None:
    install()
    install()  # idempotent
    register_sensitive(["44175521"])
    caplog.set_level(logging.INFO)
    for name in ("tasks.prepare.radiology_reports", "prefect.tomoflow_test", "pydicom"):
        logging.getLogger(name).warning("value %s in %s", b"Quixote\xff", "MRN 44175521")
        try:
            raise ValueError("PatientName='Quixote^Johanna'")
        except ValueError:
            logging.getLogger(name).exception("failed")
    text = caplog.text
    assert "failed" in text and "ValueError" in text
    assert "Quixote" not in text and "44175521" not in text
    assert "Quixote" not in warnings.formatwarning("PatientName: Quixote^Johanna", UserWarning, "f.py", 1)
