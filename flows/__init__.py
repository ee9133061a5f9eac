"""Prefect flows of tomoflow: each module wires tasks, nothing more."""

import os

# Route the plain modules' loggers (tasks.*, models.*) through Prefect's handlers, so
# their messages reach the run logs and the dashboard.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks,models")
# Telemetry cannot leave a hospital network (nor this machine); don't try.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# No report text or DICOM identifying value in any log record or warning of a flow's
# process (tasks/infra/redaction.py); the CLI installs it too.
from tasks.infra.redaction import install as _install_redaction  # noqa: E402

_install_redaction()

# An ordinary Failed run is not "Engine execution exited with unexpected exception" (tasks/infra/engine_logs.py).
from tasks.infra.engine_logs import install as _install_engine_logs  # noqa: E402

_install_engine_logs()
