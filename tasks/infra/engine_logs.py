"""Prefect's engine logs, as an operator reads them: an ordinary failure is not an "unexpected exception".

When a flow raises (a wrong parameter, missing weights, a failed child run), Prefect's
engine logs the exception once as "Encountered exception during execution" (with the
traceback) and marks the run Failed with its message. Its outermost wrapper then logs the
same exception again as "Engine execution exited with unexpected exception", which reads
like a crash of Prefect itself. :func:`install` drops that second record when the exception
is an ordinary one (an ``Exception``); a real interruption (``BaseException``: a signal,
``SystemExit``) still logs it.
"""

from __future__ import annotations

import logging

_MESSAGE = "Engine execution exited with unexpected exception"


class _OrdinaryFailure(logging.Filter):
    """Drop the engine's duplicate report of an exception the run already failed with."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != _MESSAGE or not record.exc_info:
            return True
        exc = record.exc_info[1]
        return not isinstance(exc, Exception)


def install(logger_name: str = "prefect.flow_runs") -> None:
    """Add the filter to Prefect's flow-run logger (once)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _OrdinaryFailure) for f in logger.filters):
        logger.addFilter(_OrdinaryFailure())
