"""What every tomoflow process that runs a flow sets up first: environment defaults and log hygiene.

:func:`apply_process_defaults` is called explicitly, never on import: by the ``tomoflow``
command (:func:`flows.cli.main`) before Prefect is imported, by the service's worker
(:mod:`tasks.infra.service_worker`) so that the flow runs it starts inherit the defaults, and
at the start of each flow (a deployment's run, or a flow called from Python). It

* sets, unless already set, ``PREFECT_LOGGING_EXTRA_LOGGERS=tasks,models`` (the plain modules'
  loggers go through Prefect's handlers, so their lines reach the run logs and the dashboard;
  Prefect reads it when it is first imported) and ``PREFECT_SERVER_ANALYTICS_ENABLED=false``
  (telemetry cannot leave a hospital network, nor this machine; read when a temporary server starts);
* installs the log redaction (:mod:`tasks.infra.redaction`: no report text or DICOM
  identifying value in any log record or warning of the process);
* installs the engine-log filter (:mod:`tasks.infra.engine_logs`: an ordinary Failed run is
  not "Engine execution exited with unexpected exception").

Calling it again does nothing more.
"""

from __future__ import annotations

import os

#: Environment variables set when the user has not set them, and their values.
ENV_DEFAULTS: dict[str, str] = {
    "PREFECT_LOGGING_EXTRA_LOGGERS": "tasks,models",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def apply_process_defaults() -> None:
    """Set :data:`ENV_DEFAULTS` where unset, and install the log redaction and the engine-log filter."""
    from tasks.infra.engine_logs import install as install_engine_logs
    from tasks.infra.redaction import install as install_redaction

    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    install_redaction()
    install_engine_logs()
