"""Every frame of a volume through the model, decoded in chunks on workers."""

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


def test_batches_gathered_across_volumes_give_each_volume_its_own_scores(make_dbt) -> None:
    """Thin volumes share forward passes; each still gets exactly its own frames, in job order."""
    import torch

    from tasks.score.frames import VolumeJob, score_volumes

    a, frames_a = make_dbt("a.dcm", view="rcc")
    b, frames_b = make_dbt("b.dcm", view="lcc")
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(24 * 24, 1), torch.nn.Flatten(0))
    jobs = [VolumeJob(0, str(a), "rcc", tuple(range(len(frames_a)))), VolumeJob(1, str(b), "lcc", (0, 2, 4)),
            VolumeJob(2, str(a), "rcc", (1,))]
    one_by_one = list(score_volumes(model, jobs, png_size=32, input_size=24, batch_size=1, workers=0))
    gathered = list(score_volumes(model, jobs, png_size=32, input_size=24, batch_size=7, workers=0))
    assert [r.key for r in gathered] == [0, 1, 2]
    for x, y in zip(one_by_one, gathered):
        assert x.frames == y.frames and np.allclose(x.probabilities, y.probabilities, atol=1e-6)
    assert np.isclose(gathered[2].probabilities[0], gathered[0].probabilities[1], atol=1e-6)
