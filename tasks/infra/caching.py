"""Content-based cache keys for Prefect tasks.

Prefect's default cache key contains the flow run id, and a path argument is keyed by
its string, not by what the file holds. tomoflow keys every cached task on the content
of its input files (bytes, or size + mtime + path for big files), the parameters that
matter and :data:`tasks.core.config.CODE_VERSION`, so a second run with nothing changed does
no work and a changed input file is noticed even under the same name.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from pydantic import BaseModel

from tasks.core.config import CODE_VERSION
from tasks.core.files import file_fingerprint


def _fingerprint_any(value: Any) -> Any:
    """Fingerprint a path, a list of paths or None; anything else passes through."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [_fingerprint_any(v) for v in value]
    path = Path(os.fspath(value))
    if path.is_dir():
        return {"dir": str(path), "files": {str(p.relative_to(path)): file_fingerprint(p)
                                            for p in sorted(path.rglob("*")) if p.is_file()}}
    if not path.exists():
        return {"missing": str(path)}
    return {"file": file_fingerprint(path)}


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def content_key(
    parameters: dict[str, Any], *, files: Iterable[str] = (), ignore: Iterable[str] = (), salt: str = ""
) -> str:
    """A stable hex key from task parameters, with the named ones keyed on file content.

    Args:
        parameters: The task's bound parameters.
        files: Names of parameters that hold paths (or lists of paths) to key on content.
        ignore: Names of parameters that do not change the result (e.g. output folders).
        salt: Extra text, e.g. the task name.
    """
    files, ignore = set(files), set(ignore)
    payload: dict[str, Any] = {"code": CODE_VERSION, "salt": salt}
    for name in sorted(parameters):
        if name in ignore:
            continue
        value = parameters[name]
        payload[name] = _fingerprint_any(value) if name in files else _plain(value)
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def content_cache_key_fn(
    *, files: Iterable[str] = (), ignore: Iterable[str] = ()
) -> Callable[[Any, dict[str, Any]], str]:
    """A Prefect ``cache_key_fn`` keyed on the content of the ``files`` parameters."""
    files, ignore = tuple(files), tuple(ignore)

    def key_fn(context: Any, parameters: dict[str, Any]) -> str:
        return content_key(parameters, files=files, ignore=ignore, salt=context.task.name)

    return key_fn


def keyed_dir(out_dir: str | os.PathLike[str], step: str, key: str) -> Path:
    """The folder a cached step writes its intermediates into: ``OUT/.work/<step>/<key>``.

    Two runs with different inputs or settings get different folders, so a run can never
    pick up (or overwrite) the intermediates of another run's settings, whatever order
    runs into one output folder come in; a run with the same key writes the same bytes.
    """
    return Path(out_dir) / ".work" / step / key[:24]


def step_dir(step: str, parameters: dict[str, Any], *, out_dir: str | os.PathLike[str],
             files: Iterable[str] = (), ignore: Iterable[str] = ()) -> Path:
    """:func:`keyed_dir` for a step, keyed exactly as its Prefect cache key.

    Args:
        step: The task's name (the salt of its cache key).
        parameters: The task's parameters.
        out_dir: The run's output folder.
        files: As for :func:`content_cache_key_fn`.
        ignore: As for :func:`content_cache_key_fn`.
    """
    return keyed_dir(out_dir, step, content_key(parameters, files=files, ignore=ignore, salt=step))
