"""Every frame of a volume through the model: decoding on worker processes while the model runs.

A volume's frames (every ``stride``-th) are read with the preprocessing the model was trained
with: the reader letterboxes each frame to the run's PNG size (the JPEG 2000 reduced level
that size needs), exactly the pixels prepare writes to its PNGs, then the evaluation
transform resizes it to the network's input size (:func:`models.training.augment.eval_transforms`).
Decoding is split into chunks of ``batch_size`` frames handed to worker processes
(:func:`decode_chunk`); the main process runs the model on each chunk as it arrives, so
decoding and the forward pass overlap. The trivial brightness scores of each frame
(:mod:`tasks.evaluate.trivial_scores`) are taken in the worker too, on the PNG-size image.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

# Imported here, before any worker is forked, so a child never imports (and never waits on an
# import lock another thread of the parent held at the fork).
from tasks.evaluate.trivial_scores import image_scores
from tasks.reader.frames import read_frames

#: Frames per decode chunk when no batch size says otherwise.
CHUNK_FRAMES = 16


@dataclass(frozen=True)
class VolumeJob:
    """One volume to score: its position in the list, the file, its view and the frames to read."""

    key: int
    path: str
    view: str
    frames: tuple[int, ...]


@dataclass
class VolumeResult:
    """A scored volume: per frame its probability and trivial scores, or the reason it failed."""

    key: int
    frames: list[int] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    trivial: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None


def frames_of(n_frames: int, stride: int) -> tuple[int, ...]:
    """Every ``stride``-th frame from 0; the last frame's block always has one."""
    return tuple(range(0, int(n_frames), max(1, int(stride))))


def decode_chunk(path: str, view: str, frames: tuple[int, ...], png_size: int,
                 input_size: int) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Decode ``frames`` at the PNG size and resize them to the input size (a worker's job).

    Workers are forked (a spawned one would import torch again, seconds per worker, and the
    console script has no ``__main__`` guard); this function uses no torch, so no thread pool
    of the parent's is touched in the child.

    Returns:
        ``(images, trivial)``: ``(k, input_size, input_size)`` uint8 and the trivial scores of
        each PNG-size frame.
    """
    images, trivial = [], []
    for frame in read_frames(path, list(frames), view=view, image_size=png_size):
        trivial.append(image_scores(frame.image))
        image = Image.fromarray(frame.image, mode="L")
        # What eval_transforms(input_size) does to a PIL image (torchvision hands it to PIL's
        # bilinear resize; tests check they agree pixel for pixel), without torch in the worker.
        if image.size != (input_size, input_size):
            image = image.resize((input_size, input_size), Image.BILINEAR)
        images.append(np.asarray(image))
    return np.stack(images), trivial


def _chunks(job: VolumeJob, size: int) -> list[tuple[int, ...]]:
    return [job.frames[i:i + size] for i in range(0, len(job.frames), size)]


class _Inline:
    """An executor that runs each job when submitted (``workers=0``)."""

    def submit(self, fn: Any, *args: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(exc)
        return fut

    def shutdown(self, **_: Any) -> None:
        return None


def default_workers() -> int:
    """Decode workers: one core for the model, the rest (at most 4) decode."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def score_volumes(model: Any, jobs: Iterable[VolumeJob], *, png_size: int, input_size: int, batch_size: int = 32,
                  device: Any = "cpu", workers: int = 1, autocast: bool = False) -> Iterator[VolumeResult]:
    """Score each job's frames; yield one :class:`VolumeResult` per job, in job order.

    Decoding runs ``workers`` processes ahead (``0``: in this process), in chunks of at most
    ``batch_size`` frames of one volume; the model runs here, on ``device``, under
    ``torch.inference_mode`` (``autocast``: bf16 on CUDA), on batches of ``batch_size`` frames
    gathered across volumes (thin volumes would otherwise each pay a whole forward pass).
    A volume whose frames cannot be read yields its ``error`` (the reader's one-line
    message); the others are scored regardless.
    """
    import multiprocessing
    from collections import deque

    import torch
    from torchvision.transforms import v2

    from models.nets.heads import logits_of

    to_float = v2.ToDtype(torch.float32, scale=True)
    chunk = max(1, int(batch_size))
    pool: Any = _Inline() if workers <= 0 else ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    ahead = max(2, 2 * max(1, workers))
    pending: deque[tuple[VolumeJob, tuple[int, ...], Future, bool]] = deque()
    job_iter = iter(jobs)
    results: dict[int, VolumeResult] = {}
    buffer: list[tuple[int, tuple[int, ...], np.ndarray, list[dict[str, float]]]] = []
    closing: list[int] = []  # jobs whose last chunk was taken, in job order
    model.eval()

    def fill() -> None:
        while len(pending) < ahead:
            job = next(job_iter, None)
            if job is None:
                return
            results[job.key] = VolumeResult(key=job.key)
            parts = _chunks(job, chunk)
            if not parts:
                closing.append(job.key)
            for i, part in enumerate(parts):
                pending.append((job, part, pool.submit(decode_chunk, job.path, job.view, part, png_size, input_size),
                                i == len(parts) - 1))

    def flush() -> Iterator[VolumeResult]:
        if buffer:
            x = to_float(torch.from_numpy(np.concatenate([b[2] for b in buffer])).unsqueeze(1)).to(device)
            with torch.inference_mode(), torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                                                        enabled=autocast):
                logits = logits_of(model(x)).float().reshape(-1)
            probabilities = torch.sigmoid(logits.double()).cpu().tolist()
            at = 0
            for key, part, _, trivial in buffer:
                result = results[key]
                result.frames.extend(int(f) for f in part)
                result.probabilities.extend(probabilities[at:at + len(part)])
                result.trivial.extend(trivial)
                at += len(part)
            buffer.clear()
        while closing:
            yield results.pop(closing.pop(0))

    try:
        fill()
        while pending:
            job, part, fut, last = pending.popleft()
            fill()
            result = results[job.key]
            if result.error is None:
                try:
                    images, trivial = fut.result()
                    buffer.append((job.key, part, images, trivial))
                except (ValueError, NotImplementedError, OSError) as exc:
                    result.error = f"unreadable: {exc}"
            else:
                fut.cancel()
            if last:
                closing.append(job.key)
            if sum(len(b[1]) for b in buffer) >= chunk:
                yield from flush()
        yield from flush()
    finally:
        pool.shutdown(cancel_futures=True)
