"""Two runs on one output root at the same moment: the second says it waits, then goes on."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path


def test_second_run_on_an_output_root_says_it_waits_then_goes_on(prefect_harness, tmp_path: Path,
                                                                  caplog) -> None:
    from tasks.infra.output_slot import output_root_slot

    log = logging.getLogger("tomoflow.test.slot")
    held, release, order = threading.Event(), threading.Event(), []

    def first() -> None:
        with output_root_slot(tmp_path, log):
            order.append("first in")
            held.set()
            release.wait(60)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    assert held.wait(60), "the first run never got the slot"
    threading.Timer(6.0, release.set).start()  # the first run ends after the second's short first try
    with caplog.at_level(logging.INFO, logger="tomoflow.test.slot"):
        started = time.monotonic()
        with output_root_slot(tmp_path, log):
            order.append("second in")
    thread.join(60)
    assert order == ["first in", "first out", "second in"]
    assert time.monotonic() - started > 3  # it did wait for the first run
    messages = [r.getMessage() for r in caplog.records]
    assert any("waits its turn" in m for m in messages), messages
    assert any("is free" in m for m in messages), messages


def test_a_free_output_root_is_taken_without_a_wait_message(prefect_harness, tmp_path: Path, caplog) -> None:
    from tasks.infra.output_slot import output_root_slot

    log = logging.getLogger("tomoflow.test.slot")
    with caplog.at_level(logging.INFO, logger="tomoflow.test.slot"):
        with output_root_slot(tmp_path / "free", log):
            pass
    assert not any("waits its turn" in r.getMessage() for r in caplog.records)
