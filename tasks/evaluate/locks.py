"""The output locks ``evaluate`` takes: its run folder (no training in progress) and its output folder.

``train`` holds ``RUN/.tomoflow.lock`` for as long as it writes ``best.pt``, ``last.pt`` and
the history; an evaluation started meanwhile would score a model that is still changing,
so it stops at once naming the training run. Holding the run folder's lock for the whole
evaluation also keeps a ``train`` into that folder from starting under it.
"""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from tasks.core.files import OutputInUseError, output_lock


@contextmanager
def evaluation_locks(run_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str] | None, *,
                     what: str) -> Iterator[None]:
    """Hold the run folder's lock (and the output folder's, when it is another folder).

    Raises:
        OutputInUseError: Another tomoflow command (training, or another evaluation) holds
            one of them; the message names it.
    """
    run = Path(run_dir)
    with ExitStack() as stack:
        if run.is_dir():
            try:
                stack.enter_context(output_lock(run, what=what))
            except OutputInUseError as exc:
                raise OutputInUseError(
                    f"run folder {run} cannot be evaluated now: {exc}. If that is its training, evaluate once it "
                    "has finished"
                ) from None
        if output_dir is not None and Path(output_dir).resolve() != run.resolve():
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            stack.enter_context(output_lock(output_dir, what=what))
        yield
