"""The output locks ``evaluate`` takes: its run folder (no training in progress) and its output folder;
and the same check of a run folder that ``train --weights RUN`` starts from.

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
from tasks.core.weights_setting import WeightsSetting


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


def source_run_idle(weights: object, *, run_dir: str | os.PathLike[str] | None = None) -> None:
    """Refuse to start training from a run folder that a tomoflow command is still writing.

    ``--weights RUN`` (or ``RUN/best.pt``, ``RUN/last.pt``) while RUN trains would start from
    whatever ``best.pt`` holds at that moment (epoch 5 of 10): the same lock check as
    :func:`evaluation_locks`. Other weights (``imagenet``, ``none``, a state_dict file) pass.

    Raises:
        OutputInUseError: Naming the folder and the command holding it.
    """
    if not isinstance(weights, (str, os.PathLike)):
        return
    source = WeightsSetting.verify(weights).source_run()
    if source is None or not source.is_dir():
        return
    if run_dir is not None and os.path.abspath(source) == os.path.abspath(run_dir):
        return  # resuming into the same folder: this command holds its lock already
    try:
        with output_lock(source, what="tomoflow train --weights (checking the source run)"):
            pass
    except OutputInUseError as exc:
        raise OutputInUseError(
            f"--weights {weights}: run folder {source} cannot be started from now: {exc}. Its best.pt is still "
            "changing; start from it once that command has finished"
        ) from None
    except OSError:
        return  # a read-only source folder: no tomoflow command can be writing it
