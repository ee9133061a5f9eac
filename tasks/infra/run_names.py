"""Flow run names read from the run's ``config`` parameter: ``train vgg16 sgd``, ``prepare single-slice 224px``.

Prefect calls a flow's ``flow_run_name`` callable with no arguments, so the name is built
from :data:`prefect.runtime.flow_run`'s parameters. It never raises: a bad configuration
gets ``<kind> (invalid config)`` here and fails the run later, with its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from prefect.runtime import flow_run
from pydantic import BaseModel

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def config_run_name(kind: str, model: type[ConfigT], describe: Callable[[ConfigT], str]) -> Callable[[], str]:
    """A ``flow_run_name`` callable: ``f"{kind} {describe(config)}"`` for the run's validated config.

    Args:
        kind: The flow's short name (``train``), also the invalid-config name's first word.
        model: The flow's configuration model; a dict parameter is validated with it.
        describe: The rest of the name, from the validated configuration.
    """
    def run_name() -> str:
        try:
            config = flow_run.parameters.get("config")
            cfg = config if isinstance(config, model) else model.model_validate(config or {})
            return f"{kind} {describe(cfg)}"
        except Exception:
            return f"{kind} (invalid config)"

    run_name.__doc__ = f"``{kind} ...``; never raises (a bad config fails the run later, with its reason)."
    return run_name
