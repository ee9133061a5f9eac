"""The ``tomoflow serve-outputs`` command: reports and learning curves over HTTP, read-only."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_serve_outputs(args: argparse.Namespace) -> int:
    from tasks.infra.outputs_server import make_server

    server = make_server(args.root, host=args.host, port=args.port)
    host, port = server.server_address[:2]
    print(f"serving reports and learning curves under {args.root} at http://{host}:{port}/ "
          "(nothing else: no slices, manifests or checkpoints; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def add_serve_outputs(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``tomoflow serve-outputs`` command."""
    p = sub.add_parser("serve-outputs", help="Serve the reports and learning curves of an output root, read-only.")
    p.add_argument("--root", type=Path, required=True, help="The output root to serve (TOMOFLOW_OUTPUT_ROOT).")
    p.add_argument("--host", default="127.0.0.1", help="The address to bind (default 127.0.0.1: this machine only).")
    p.add_argument("--port", type=int, default=8080, help="The port to listen on (default 8080; 0 picks any free "
                                                          "port).")
    p.set_defaults(func=_cmd_serve_outputs)
