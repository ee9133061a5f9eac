"""What the service needs from its environment, checked up front with messages an operator can act on.

A deployment's run starts on a worker, in the code checkout (``TOMOFLOW_HOME``), with no
paths in its parameters when a schedule fires: the worker's environment says where the
data is (``TOMOFLOW_DATA_ROOT``) and where outputs go (``TOMOFLOW_OUTPUT_ROOT``). When one
is missing the run fails at once, naming the variable and the command that sets it,
instead of resolving ``data`` inside the checkout. Links for the dashboard come from
Prefect's ``PREFECT_UI_URL`` and from ``TOMOFLOW_OUTPUTS_URL`` (where the output root is
served over HTTP).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

#: The code checkout (where this module lives).
CODE_DIR = Path(__file__).resolve().parents[2]

HOME_VAR = "TOMOFLOW_HOME"
DATA_VAR = "TOMOFLOW_DATA_ROOT"
OUTPUT_VAR = "TOMOFLOW_OUTPUT_ROOT"
OUTPUTS_URL_VAR = "TOMOFLOW_OUTPUTS_URL"


class ServiceConfigError(ValueError):
    """A parameter or an environment variable of a run is wrong; the message says what to change."""


def one_line(text: str, limit: int = 600) -> str:
    """``text`` on one line (Prefect shows a state message on one line), cut at ``limit``."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def validation_message(exc: ValidationError, prefix: str = "config") -> str:
    """A pydantic error as one line: ``config.train.epochs: Input should be ... (got 0)``."""
    parts = []
    for err in exc.errors():
        where = ".".join([prefix, *(str(p) for p in err.get("loc", ()))])
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        parts.append(f"{where}: {err.get('msg', 'invalid')}{got}")
    return one_line("; ".join(parts))


def _missing(var: str, param: str, what: str) -> ServiceConfigError:
    return ServiceConfigError(
        f"no {what}: {var} is not set in the worker's environment and the run has no {param} parameter; "
        f"set it where the worker starts (export {var}=/path/to/folder, then restart "
        f"'prefect worker start --pool cpu-pool') or pass --param {param}=DIR")


def deployment_id() -> Any:
    """The id of the deployment this flow run was started from (None: a terminal, a test or a subflow)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return getattr(getattr(ctx, "flow_run", None), "deployment_id", None)


def deployment_defaults(parameter: str) -> Any:
    """The value the deployment stores for ``parameter`` (its default), or None.

    Prefect replaces a deployment parameter whole when a run sets it; the pipeline reads the
    stored default to merge a run's ``config`` into it instead.
    """
    dep = deployment_id()
    if dep is None:
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return (client.read_deployment(dep).parameters or {}).get(parameter)


def resolve_root(value: str | None, var: str, param: str, what: str, *, must_exist: bool,
                 deployment: bool) -> str:
    """The folder for ``param``: the parameter, else ``$var``; checked before any work.

    Args:
        value: The run's parameter (or the config's explicit setting), if any.
        var: The environment variable a scheduled run falls back to.
        param: The parameter's name (for the message).
        what: What the folder holds (for the message).
        must_exist: The folder must already exist (the data root).
        deployment: The run comes from a deployment: its working directory is the code
            checkout, so relative paths and folders inside the checkout are refused.

    Raises:
        ServiceConfigError: missing, not a folder, relative or inside the checkout.
    """
    source = f"--param {param}" if value else var
    value = value or os.environ.get(var) or None
    if not value:
        raise _missing(var, param, what)
    path = Path(value).expanduser()
    if deployment:
        if not path.is_absolute():
            raise ServiceConfigError(
                f"{param} {value!r} (from {source}) is a relative path, which a worker would resolve inside the "
                f"code checkout; give an absolute path")
        home = Path(os.environ.get(HOME_VAR) or CODE_DIR).resolve()
        resolved = path.resolve()
        if resolved == home or home in resolved.parents or resolved == CODE_DIR or CODE_DIR in resolved.parents:
            raise ServiceConfigError(
                f"{param} {value!r} (from {source}) is inside the code checkout {home}; runs never write there: "
                f"choose a folder outside it")
    if must_exist and not path.is_dir():
        raise ServiceConfigError(
            f"{param} {value!r} (from {source}) is not a folder; point it at the folder holding the BCS-DBT CSVs "
            f"and images")
    return str(path)


def checkout(**_: Any) -> dict[str, str]:
    """Prefect pull step: run from the code checkout named by ``TOMOFLOW_HOME``.

    Replaces ``set_working_directory: "{{ $TOMOFLOW_HOME }}"``, which without the variable
    crashes in Prefect's script loader with a bare ``FileNotFoundError``. Here a missing or
    wrong ``TOMOFLOW_HOME`` marks the flow run Failed with a message naming the variable
    and the command that sets it, then stops.

    Returns:
        ``{"directory": TOMOFLOW_HOME}`` (Prefect runs the flow from there).
    """
    home = os.environ.get(HOME_VAR, "").strip()
    problem = None
    if not home:
        problem = f"{HOME_VAR} is not set in the worker's environment"
    elif not (Path(home) / "flows" / "pipeline.py").is_file():
        problem = f"{HOME_VAR}={home} is not a tomoflow checkout (no flows/pipeline.py there)"
    if problem:
        message = (f"{problem}: start the worker with the checkout's path, e.g. 'export {HOME_VAR}=/path/to/tomoflow' "
                   f"then 'prefect worker start --pool cpu-pool'")
        _fail_flow_run(message)
        raise RuntimeError(message)
    os.chdir(home)
    return {"directory": str(Path(home).resolve())}


def _fail_flow_run(message: str) -> None:
    """Best effort: mark the current flow run Failed with ``message`` before the process exits."""
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not run_id:
        return
    try:
        from prefect.client.orchestration import get_client
        from prefect.states import Failed

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run_id, Failed(message=message), force=True)
    except Exception:  # the raised error still reaches the worker's log
        pass


def flow_run_url(flow_run_id: Any) -> str:
    """The dashboard page of a flow run (``PREFECT_UI_URL``), or ``flow run <id>`` without one."""
    from prefect.settings import get_current_settings

    ui = get_current_settings().ui_url
    return f"{str(ui).rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else f"flow run {flow_run_id}"


def outputs_url(path: str | Path, root: str | Path) -> str | None:
    """The HTTP address of ``path`` under the served output root, or None when not served."""
    base = os.environ.get(OUTPUTS_URL_VAR, "").strip().rstrip("/")
    if not base:
        return None
    from urllib.parse import quote

    rel = os.path.relpath(Path(path), Path(root))
    return f"{base}/{quote(Path(rel).as_posix())}"
