"""An ordinary flow failure does not log Prefect's "unexpected exception"; a chance warning says why."""

from __future__ import annotations

import logging
import sys


def _record(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        info = sys.exc_info()
    return logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1,
                             "Engine execution exited with unexpected exception", None, info)


def test_ordinary_failure_is_not_an_unexpected_exception(caplog) -> None:
    from tasks.infra.engine_logs import install

    install()
    install()  # once only
    logger = logging.getLogger("prefect.flow_runs")
    assert sum(type(f).__name__ == "_OrdinaryFailure" for f in logger.filters) == 1
    ours = next(f for f in logger.filters if type(f).__name__ == "_OrdinaryFailure")
    assert not ours.filter(_record(ValueError("wrong parameter")))
    assert ours.filter(_record(KeyboardInterrupt()))  # a real interruption is still logged
    other = logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, "Encountered exception", None, None)
    assert ours.filter(other)


def test_chance_warning_beside_a_perfect_auc_gives_the_reason_and_counts() -> None:
    from tasks.evaluate.report_sections import null_warnings

    entry = {"metrics": {"roc_auc": 1.0}, "intervals": {}, "better_than_null": False, "null_roc_auc": 0.5,
             "null_roc_auc_range": [0.0, 1.0], "n_positive": 2, "n_negative": 9}
    [warning] = null_warnings({"levels": {"patient": entry}})
    assert "2 tumour and 9 normal patients are too few positives for an interval" in warning
    assert warning.endswith("random scores reach 1.000 too.")
    # With an interval, the interval is the reason: no count sentence.
    entry = {**entry, "intervals": {"roc_auc": [0.4, 1.0]}}
    [warning] = null_warnings({"levels": {"patient": entry}})
    assert "too few positives" not in warning
