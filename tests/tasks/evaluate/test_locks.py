"""`train --weights RUN` takes the lock check `evaluate` takes, while RUN trains."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.core.files import LOCK_NAME, OutputInUseError
from tasks.evaluate.locks import source_run_idle
from tests.flows.cli_env import REPO

HOLD = ("import sys, time\nfrom tasks.core.files import output_lock\n"
        "with output_lock(sys.argv[1], what='flow run train vgg16 sgd'):\n"
        "    print('held', flush=True)\n    time.sleep(60)\n")


def test_starting_from_a_run_still_training_is_refused_naming_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"x")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for weights in (str(run), str(run / "best.pt")):
            with pytest.raises(OutputInUseError) as caught:
                source_run_idle(weights)
            assert str(run) in str(caught.value) and "train vgg16 sgd" in str(caught.value)
    finally:
        holder.kill()
        holder.wait()
    source_run_idle(str(run))  # finished: starting from it is fine
    source_run_idle("imagenet")
    source_run_idle(str(tmp_path / "weights.pth"))


def test_resuming_into_the_source_folder_itself_is_not_refused(tmp_path: Path) -> None:
    """The folder is held (by this resuming command, here a holder process): only starting *another*
    run from it is refused; resuming into it (run_dir is the source) is not."""
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert (run / LOCK_NAME).exists()
        with pytest.raises(OutputInUseError):  # the control: the same held folder, another run_dir
            source_run_idle(str(run), run_dir=tmp_path / "other")
        assert source_run_idle(str(run), run_dir=run) is None
    finally:
        holder.kill()
        holder.wait()
