"""Keep report text and DICOM identifying values out of every log record and warning.

Report text and a DICOM header's patient module (name, birth date, other ids, address)
identify patients. tomoflow's own code never logs them, but exception messages from
libraries can carry them: a ``UnicodeDecodeError`` repeats the bytes around a bad byte, a
pydicom warning quotes an element's value, a pandas error may quote a field. This module
rewrites every log record as it is created (a log-record factory, so records of
tomoflow's, Prefect's and any library's loggers, including those Prefect sends to its
API and database, pass through it) and every warning message:

* bytes literals (``b'...'``, as in a decode error's repr) become ``b'<redacted>'``;
* a DICOM element of the patient group ``(0010,xxxx)`` keeps its tag and VR, not its value;
* ``PatientName=...``, ``PatientBirthDate: ...`` and the like keep the keyword, not the value;
* ``text=...`` / ``'text': ...`` (a report row's text field in a repr) loses its value;
* a value pydicom quotes (``Invalid value for VR IS: '...'``) loses it, and every quoted
  string in a warning or log record from pydicom is removed (its messages quote header values);
* values registered with :func:`register_sensitive` are replaced wherever they appear.

:func:`install` is idempotent and is called by the CLI, by ``flows`` on import and by
every extraction worker.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
import warnings
from typing import Any, Iterable

REDACTED = "<redacted>"

#: DICOM keywords whose values identify a patient (PS3.15 Annex E, patient module).
IDENTIFYING_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientBirthDate", "PatientBirthTime", "PatientBirthName", "OtherPatientIDs",
    "OtherPatientIDsSequence", "OtherPatientNames", "PatientAddress", "PatientMotherBirthName",
    "PatientTelephoneNumbers", "MedicalRecordLocator", "PatientComments", "ReferringPhysicianName",
    "InstitutionAddress", "AdditionalPatientHistory", "EthnicGroup", "Occupation",
)

_BYTES = re.compile(r"""\bb(?P<q>['"])(?:\\.|(?!(?P=q)).)*(?P=q)""")
_GROUP_0010 = re.compile(r"(\(0010,\s*[0-9A-Fa-f]{4}\)[^\n]*?\b[A-Z]{2}:\s*)[^\n]*")
_KEYWORD = re.compile(
    r"(\b(?:" + "|".join(IDENTIFYING_KEYWORDS) + r")\b['\"]?\s*[=:]\s*)"
    r"""('(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*"|\[[^\]\n]*\]|[^\s,;)]+)"""
)
_VR_VALUE = re.compile(r"""(\bfor VR [A-Z]{2}\s*:?\s*)('(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*"|[^\s,;)]+)""")
_QUOTED = re.compile(r"'(?:\\.|[^'\\\n])*'" + r'|"(?:\\.|[^"\\\n])*"')
_TEXT_FIELD = re.compile(r"""(\btext['"]?\s*[=:]\s*)('(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*"|[^\n,;)]+)""")

_sensitive: set[str] = set()
_lock = threading.Lock()


def register_sensitive(values: Iterable[object]) -> None:
    """Redact these exact values (three characters or more) from every later record."""
    with _lock:
        for value in values:
            text = str(value).strip() if value is not None else ""
            if len(text) >= 3:
                _sensitive.add(text)


def redact(text: str) -> str:
    """``text`` with report text, bytes literals and identifying DICOM values removed."""
    if not text:
        return text
    text = _BYTES.sub(f"b'{REDACTED}'", text)
    text = _GROUP_0010.sub(lambda m: m.group(1) + REDACTED, text)
    text = _KEYWORD.sub(lambda m: m.group(1) + REDACTED, text)
    text = _TEXT_FIELD.sub(lambda m: m.group(1) + REDACTED, text)
    text = _VR_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
    if _sensitive:
        for value in sorted(_sensitive, key=len, reverse=True):
            if value in text:
                text = text.replace(value, REDACTED)
    return text


_formatter = logging.Formatter()


def redact_quoted(text: str) -> str:
    """``text`` with every quoted string removed (for messages of libraries that quote header values)."""
    return _QUOTED.sub(f"'{REDACTED}'", redact(text))


def _from_pydicom(name: str) -> bool:
    return name == "pydicom" or name.startswith("pydicom.") or "/pydicom/" in name.replace("\\", "/")


def _redact_record(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: keep the template only
        message = str(record.msg)
    pydicom_warning = record.name == "py.warnings" and "pydicom" in message
    clean = redact_quoted if _from_pydicom(record.name) or pydicom_warning else redact
    record.msg, record.args = clean(message), ()
    if (record.exc_info and record.exc_info[0] is not None and record.name.startswith(_RUN_LOGGERS)
            and _user_error(record.exc_info[0])):
        # Prefect logs a failed run with the exception's repr and its traceback; an error the
        # user fixes (bad input, a busy or unwritable folder) already names the file and what
        # to do, and a traceback under it only hides that line.
        record.exc_info, record.exc_text = None, None
    if record.exc_info and record.exc_info[0] is not None:
        # Formatters use exc_text when it is set; format it now, redacted.
        record.exc_text = redact(_formatter.formatException(record.exc_info))
        record.exc_info = (record.exc_info[0], record.exc_info[0](REDACTED) if _constructible(record.exc_info[0])
                           else None, None)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


#: Exceptions whose message is the whole story (tomoflow raises them for bad input or a
#: busy, unwritable output); ``TOMOFLOW_TRACEBACKS=1`` logs their tracebacks anyway.
#: Prefect's run loggers: their failure records already quote the exception in the message.
_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
_USER_ERRORS = ("ValueError", "NotImplementedError", "FileNotFoundError", "OutputInUseError")


def _user_error(kind: type[BaseException]) -> bool:
    import os

    if os.environ.get("TOMOFLOW_TRACEBACKS") == "1":
        return False
    return any(cls.__name__ in _USER_ERRORS for cls in kind.__mro__)


def _constructible(kind: type[BaseException]) -> bool:
    try:
        kind(REDACTED)
    except Exception:
        return False
    return True


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the record (see :func:`redact`); keeps every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


_installed = False


def install() -> None:
    """Redact every log record created in this process from now on, and every warning."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return _redact_record(previous(*args, **kwargs))

    logging.setLogRecordFactory(factory)
    # Records made before this (or by a handler's own factory) still meet the filter.
    flt = RedactingFilter()
    for name in ("", "prefect", "tasks", "flows", "models", "tomoflow"):
        logger = logging.getLogger(name)
        logger.addFilter(flt)
        for handler in logger.handlers:
            handler.addFilter(flt)

    original_format = warnings.formatwarning

    def formatwarning(message: Any, category: Any, filename: str, lineno: int, line: str | None = None) -> str:
        text = original_format(message, category, filename, lineno, line)
        return redact_quoted(text) if _from_pydicom(str(filename)) else redact(text)

    warnings.formatwarning = formatwarning
    _installed = True


def safe_exception_text(exc: BaseException) -> str:
    """A one-line, redacted description of ``exc`` (for messages that quote an error)."""
    return redact("".join(traceback.format_exception_only(type(exc), exc)).strip())
