"""Prefect settings that let a flow start on a fresh machine, applied before Prefect reads them.

Without ``PREFECT_API_URL`` every ``tomoflow`` command that runs a flow starts Prefect's
temporary (ephemeral) API server. On a new ``PREFECT_HOME`` that server first creates and
migrates its SQLite database: 25-30 s on a 2-core machine, past Prefect's default start-up
timeout of 20 s (``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``), so a new user's
first ``make demo`` died with "Timed out while attempting to connect to ephemeral Prefect
API server". :func:`apply_prefect_defaults` raises that timeout to
:data:`EPHEMERAL_STARTUP_TIMEOUT_S`, through Prefect's own setting, unless the user chose a
value (in the environment, a ``.env``/``prefect.toml``/``pyproject.toml`` Prefect reads, or
the active profile) or has a server of their own (``PREFECT_API_URL``), which is then used
as it is. A longer timeout costs nothing when the server starts quickly: Prefect stops
waiting as soon as the server answers.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Prefect's setting (environment variable) for how long to wait for the temporary server.
STARTUP_TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"

#: Seconds to wait for the temporary server: four times a first start (database creation
#: and migration) measured on a 2-core machine, so a busy machine still makes it.
EPHEMERAL_STARTUP_TIMEOUT_S = 120


def apply_prefect_defaults(*, startup_timeout_s: int = EPHEMERAL_STARTUP_TIMEOUT_S) -> int | None:
    """Give Prefect's temporary server time for a first start, unless the user decided.

    Sets ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` in this process's environment
    (so processes it starts inherit it) and refreshes Prefect's global settings, so the
    value is in force even when Prefect was imported already. Call it before the first flow
    runs; calling it again does nothing.

    Args:
        startup_timeout_s: The timeout to set, in seconds.

    Returns:
        The timeout set, or ``None`` when nothing was changed: the variable is set, a
        settings source Prefect reads (profile, ``prefect.toml``, ...) sets it, or
        ``PREFECT_API_URL`` names a server (no temporary server will start).
    """
    if os.environ.get(STARTUP_TIMEOUT_VARIABLE):
        return None
    # Prefect's own settings model reads every source it would use (environment, .env,
    # prefect.toml, pyproject.toml, the active profile); a field the user set appears in
    # model_fields_set whatever its value.
    from prefect.settings import Settings

    settings = Settings()
    if settings.api.url:
        return None
    if "startup_timeout_seconds" in settings.server.ephemeral.model_fields_set:
        return None
    os.environ[STARTUP_TIMEOUT_VARIABLE] = str(int(startup_timeout_s))
    # Importing prefect.settings built Prefect's global settings from the old environment.
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()
    return int(startup_timeout_s)


def check_prefect_home() -> Path:
    """Fail at once when Prefect's home folder cannot be created or written.

    Prefect keeps its database, profiles and results there; when it cannot, the temporary
    server never starts and the command only fails after the start-up timeout, blaming the
    server. Checked before any flow.

    Raises:
        ValueError: Naming ``PREFECT_HOME`` (the folder) and the reason.
    """
    from tasks.core.files import OutputPathError, ensure_writable_dir

    home = Path(os.path.expanduser(os.environ.get("PREFECT_HOME") or "~/.prefect"))
    try:
        return ensure_writable_dir(home, what="PREFECT_HOME")
    except OutputPathError as exc:
        raise ValueError(f"{exc}; set PREFECT_HOME to a folder you can write to") from None
