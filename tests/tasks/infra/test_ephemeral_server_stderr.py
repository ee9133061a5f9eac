"""Tests for tasks.infra.ephemeral_server_stderr: the temporary server's shutdown CancelledError traceback is dropped, nothing else."""

from __future__ import annotations

import io
import os

from tasks.infra.ephemeral_server_stderr import filter_cancelled, forward_without_cancelled


def test_cancelled_tracebacks_are_dropped_other_lines_kept() -> None:
    lines = [
        "INFO: started\n",
        "ERROR:    Exception in 'lifespan' protocol\n",
        "Traceback (most recent call last):\n", "  File \"x.py\", line 1, in f\n", "    await g()\n",
        "asyncio.exceptions.CancelledError\n",
        "after\n",
        "Traceback (most recent call last):\n", "  File \"y.py\", line 2, in h\n", "ValueError: boom\n",
        "end\n",
    ]
    assert list(filter_cancelled(lines)) == [
        "INFO: started\n", "after\n",
        "Traceback (most recent call last):\n", "  File \"y.py\", line 2, in h\n", "ValueError: boom\n", "end\n",
    ]


def test_forwarding_thread_passes_the_pipe_on() -> None:
    read, write = os.pipe()
    target = io.StringIO()
    with os.fdopen(read, "rb") as stream:
        with os.fdopen(write, "wb") as sink:
            sink.write(b"hello\nTraceback (most recent call last):\n  x\nasyncio.CancelledError\nbye\n")
        forward_without_cancelled(stream, target).join(timeout=10)
    assert target.getvalue() == "hello\nbye\n"
