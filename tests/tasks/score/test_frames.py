"""Every frame of a volume through the model, decoded in chunks on workers (issue 27 point 5)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("workers", [0, 1])
def test_frames_read_in_chunks_on_workers_score_as_one_pass(make_dbt, workers: int) -> None:
    """Decoding chunks on worker processes gives what one inline pass gives (one orientation per volume)."""
    import torch

    from tasks.score.frames import VolumeJob, score_volumes

    path, stored = make_dbt("v.dcm", view="rcc")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(24 * 24, 1), torch.nn.Flatten(0))
    job = VolumeJob(key=0, path=str(path), view="lcc", frames=tuple(range(len(stored))))
    whole = next(score_volumes(model, [job], png_size=32, input_size=24, batch_size=len(stored), workers=0))
    chunked = next(score_volumes(model, [job], png_size=32, input_size=24, batch_size=2, workers=workers))
    assert whole.frames == chunked.frames == list(range(len(stored)))
    assert np.allclose(whole.probabilities, chunked.probabilities, atol=1e-6)
    assert whole.trivial == chunked.trivial
