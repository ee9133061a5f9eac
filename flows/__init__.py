"""Prefect flows of tomoflow: each module wires tasks, nothing more."""

import os

# Route the plain modules' loggers (tasks.*, models.*) through Prefect's handlers, so
# their messages reach the run logs and the dashboard.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks,models")
# Telemetry cannot leave a hospital network (nor this machine); don't try.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
