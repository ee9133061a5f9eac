"""The temporary Prefect server's stderr, passed on without its shutdown noise.

When Prefect stops its temporary server at the end of a command (SIGTERM to uvicorn), the
server's lifespan tasks are cancelled and uvicorn may print an ``asyncio.CancelledError``
traceback after the run already finished in state Completed: alarming, and about nothing.
:func:`forward_without_cancelled` copies the server's stderr line by line, dropping only
traceback blocks whose exception is a ``CancelledError`` (with the log line announcing
them); every other line, and every other traceback, passes unchanged.
"""

from __future__ import annotations

import sys
import threading
from typing import IO, Iterable, Iterator


def _is_continuation(line: str) -> bool:
    return (line.startswith((" ", "\t")) or line.startswith("Traceback (most recent call last)")
            or line.strip() == "" or line.startswith("During handling of the above exception")
            or line.startswith("The above exception was the direct cause"))


def filter_cancelled(lines: Iterable[str]) -> Iterator[str]:
    """``lines`` without traceback blocks that end in ``CancelledError`` (and their announcing line)."""
    held: str | None = None  # a log line that may announce the next traceback
    block: list[str] = []
    for line in lines:
        if block:
            if _is_continuation(line):
                block.append(line)
                continue
            block.append(line)  # the exception line ends the block
            if "CancelledError" not in line:
                yield from ([held] if held else []) + block
            held, block = None, []
            continue
        if line.startswith("Traceback (most recent call last)"):
            block = [line]
            continue
        if held is not None:
            yield held
            held = None
        if line.startswith(("ERROR:", "ERROR ")) or "Exception in" in line:
            held = line
            continue
        yield line
    if held is not None:
        yield held
    if block and not any("CancelledError" in b for b in block[-1:]):
        yield from block


def forward_without_cancelled(stream: IO[bytes], target: IO[str] | None = None) -> threading.Thread:
    """Copy ``stream`` (a server's stderr pipe) to ``target`` (our stderr) in a daemon thread, filtered."""
    out = target or sys.stderr

    def lines() -> Iterator[str]:
        for raw in iter(stream.readline, b""):
            yield raw.decode("utf-8", "replace")

    def pump() -> None:
        for line in filter_cancelled(lines()):
            try:
                out.write(line)
                out.flush()
            except (OSError, ValueError):  # our stderr is gone: keep draining the pipe
                continue

    thread = threading.Thread(target=pump, name="prefect-server-stderr", daemon=True)
    thread.start()
    return thread
