"""A read-only HTTP server for what the dashboard links to: reports and learning curves, nothing else.

The output root also holds ``prepared/`` (every patient's slices as PNGs), manifests,
checkpoints and predictions. ``python -m http.server`` over it would list and serve all of
them to anyone who can reach the port. This server answers ``GET``/``HEAD`` only, for files
whose name is in :data:`SERVED_NAMES`, inside the root after symlinks, never under a
``prepared`` or ``slices`` folder; no directory listings. It binds to loopback by default.
"""

from __future__ import annotations

import functools
import http.server
import os
from pathlib import Path
from typing import Any

#: The files the dashboard's artifacts link to (``tasks.pipeline.dashboard``, ``tasks.pipeline.steps``).
SERVED_NAMES = frozenset({"report.html", "learning_curves.png", "comparison.md", "comparison.csv"})
#: Pages served only inside a folder of this name: the training-size sweep's page (``tasks.sweep.page``).
SERVED_IN_FOLDER = frozenset({("sweep", "index.html")})
#: Folders whose content is never served, whatever the file's name.
PRIVATE_FOLDERS = frozenset({"prepared", "slices", ".work", ".cache"})


def servable(root: str | os.PathLike[str], url_path: str) -> Path | None:
    """The file ``url_path`` names under ``root``, or None when it must not be served."""
    from urllib.parse import unquote, urlsplit

    relative = unquote(urlsplit(url_path).path).lstrip("/")
    parts = [p for p in relative.split("/") if p]
    if not parts or any(p in ("..", ".") or p in PRIVATE_FOLDERS for p in parts):
        return None
    if parts[-1] not in SERVED_NAMES and tuple(parts[-2:]) not in SERVED_IN_FOLDER:
        return None
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, *parts))
    if not real.startswith(real_root.rstrip(os.sep) + os.sep) or not os.path.isfile(real):
        return None
    inside = Path(real).relative_to(real_root).parts
    return None if any(p in PRIVATE_FOLDERS for p in inside) else Path(real)


class OutputsHandler(http.server.SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler`` limited to :func:`servable` files; every other path is 404."""

    def __init__(self, *args: Any, root: str, **kwargs: Any) -> None:
        self.outputs_root = root
        super().__init__(*args, directory=root, **kwargs)

    def send_head(self):  # noqa: ANN201 - the base class's signature
        target = servable(self.outputs_root, self.path)
        if target is None:
            self.send_error(404, "Not served: only reports and learning curves are")
            return None
        self.path = "/" + target.relative_to(os.path.realpath(self.outputs_root)).as_posix()
        return super().send_head()

    def list_directory(self, path):  # noqa: ANN001, ANN201 - never list a folder
        self.send_error(404, "No listings")
        return None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
        return


class OutputsServer(http.server.ThreadingHTTPServer):
    """The threading server, quiet about clients that hang up mid-answer (nothing is wrong on our side)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # BrokenPipe, ConnectionReset: the client went away
        super().handle_error(request, client_address)


def make_server(root: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 8080) -> http.server.ThreadingHTTPServer:
    """A threading HTTP server for :class:`OutputsHandler` over ``root`` (port 0: any free port).

    Raises:
        ValueError: ``root`` is not a folder, or the address cannot be bound (one line naming it).
    """
    if not Path(root).is_dir():
        raise ValueError(f"--root {root} is not a folder; pass the output root (TOMOFLOW_OUTPUT_ROOT)")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"--port {port} is not a port number (0 to 65535; 0: any free port)")
    handler = functools.partial(OutputsHandler, root=str(root))
    try:
        return OutputsServer((host, port), handler)
    except OSError as exc:
        raise ValueError(
            f"cannot listen on {host} port {port} ({exc.strerror or type(exc).__name__}): another program (perhaps "
            "another tomoflow serve-outputs) uses it; pass another --port, or --port 0 for any free port"
        ) from None
