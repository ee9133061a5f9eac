"""Data-parallel training over several processes (one per GPU) launched by ``torchrun``.

:func:`models.training.fit.fit` uses this module when it finds itself inside a ``torchrun`` job
(``WORLD_SIZE`` > 1); without one it never touches ``torch.distributed`` and nothing
changes. Start a job with ``python -m models.training.torchrun_entry --config RUN/config.json`` under
``torchrun`` (see :func:`launch_command`), or from Python with :func:`train_with_torchrun`.

What the processes ("ranks") share, and how:

* **The batch.** ``train.batch_size`` stays the *global* batch: each of ``W`` ranks
  computes ``batch_size / W`` images of it (:func:`per_rank_batch_size`), and DDP averages
  the gradients, so the learning rate and the study's other settings mean the same thing
  on 1 or 8 GPUs. With the sharding below, step ``k``'s images over all ranks are step
  ``k``'s batch of a single-process run, and ``max_batches`` caps the same images.
* **The order.** Every rank draws the same ``(seed, epoch)`` order and per-sample
  augmentation seeds (:class:`~models.training.data.EpochSampler`) and keeps its
  ``DistributedSampler`` share (padded by wrapping around to a multiple of ``W``, then
  every ``W``-th item from its rank on): all ranks take the same number of steps, and an
  image gets the same augmentation whichever rank draws it. Validation is sharded the same way
  without padding; it runs on the unwrapped model, so no collective depends on how many
  batches a rank holds.
* **The metrics.** Each rank's loss and accuracy sums and image counts are gathered and
  added up in rank order (:meth:`Group.sum_metrics`), so every rank computes the same
  history row to the last bit, and early stopping and ``best.pt`` decide alike.
* **The files.** Only rank 0 writes (``config.json``, ``history.csv``, ``best.pt``,
  ``last.pt``); the others wait at a barrier after each epoch. On resume every rank
  reads ``last.pt``.
* **The replicas.** After each epoch rank 0's buffers (BatchNorm statistics) are
  broadcast, and every parameter and buffer is checked to be identical on all ranks
  (:meth:`Group.check_in_sync`): a desynchronised run stops with an error instead of
  silently averaging different models.

Freeze-then-fine-tune. DDP only registers gradient hooks on parameters that require a
gradient when it is built, so a wrapper built while the backbone is frozen would never
average the backbone's gradients after unfreezing. :meth:`Group.wrap` therefore rebuilds
the wrapper whenever the set of trainable parameters changes (once, at the unfreeze
epoch), and builds it with ``find_unused_parameters=False``: every trainable parameter
takes part in each forward pass (the backbones' ImageNet classifiers are replaced by
``Identity`` and Inception's auxiliary head is used by the training loss whenever it
exists), so the extra graph traversal and the all-reduce of the frozen backbone's zero
gradients that ``find_unused_parameters=True`` would cost are avoided. ``static_graph``
is not used because the graph does change at the unfreeze epoch.

Not synchronised: BatchNorm statistics within a step (Inception v3 normalises over each
rank's share of the batch; the frozen phase keeps them in eval mode anyway), and dropout,
which draws from a per-rank seed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "DistEnv",
    "Group",
    "current_env",
    "device_for",
    "launch_command",
    "per_rank_batch_size",
    "process_group",
    "train_with_torchrun",
]

log = logging.getLogger(__name__)

#: The project root, put on ``PYTHONPATH`` of the processes :func:`train_with_torchrun` starts.
_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a ``torchrun`` job.

    Attributes:
        world_size: Processes in the job (``WORLD_SIZE``); 1 without ``torchrun``.
        rank: This process's global rank (``RANK``).
        local_rank: Its rank on this machine (``LOCAL_RANK``): the GPU it uses.
        local_world_size: Processes on this machine (``LOCAL_WORLD_SIZE``).
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        """Whether this is a multi-process job."""
        return self.world_size > 1


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={text!r} is not an integer; it is set by torchrun "
            "(WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE): unset it, or launch with torchrun"
        ) from None


def current_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """The job this process belongs to, from torchrun's environment variables.

    Args:
        environ: Variables to read; default ``os.environ``.

    Raises:
        ValueError: A variable that isn't an integer, or a rank outside ``[0, WORLD_SIZE)``.
    """
    environ = os.environ if environ is None else environ
    world = _env_int(environ, "WORLD_SIZE", 1)
    if world <= 1:
        return DistEnv()
    rank = _env_int(environ, "RANK", 0)
    local_rank = _env_int(environ, "LOCAL_RANK", rank)
    local_world = _env_int(environ, "LOCAL_WORLD_SIZE", world)
    if not 0 <= rank < world or not 0 <= local_rank < local_world:
        raise ValueError(
            f"RANK={rank} / LOCAL_RANK={local_rank} is outside WORLD_SIZE={world} / "
            f"LOCAL_WORLD_SIZE={local_world}; launch with torchrun rather than setting these by hand"
        )
    return DistEnv(world_size=world, rank=rank, local_rank=local_rank, local_world_size=local_world)


def per_rank_batch_size(batch_size: int, world_size: int) -> int:
    """Each rank's share of the global ``train.batch_size``.

    Raises:
        ValueError: ``batch_size`` is not a multiple of ``world_size``.
    """
    if batch_size % world_size:
        lower = max(world_size, batch_size // world_size * world_size)
        upper = -(-batch_size // world_size) * world_size
        raise ValueError(
            f"train.batch_size {batch_size} cannot be split evenly over {world_size} training processes "
            f"(torchrun --nproc_per_node x nodes); batch_size is the global batch, each process computing "
            f"batch_size / {world_size} images of it: use a multiple of {world_size} (e.g. {lower} or "
            f"{upper}) or another number of processes"
        )
    return batch_size // world_size


def device_for(env: DistEnv, device: torch.device) -> torch.device:
    """``cuda:LOCAL_RANK`` for a CUDA device in a multi-process job, else ``device``.

    Raises:
        ValueError: This machine has fewer GPUs than processes.
    """
    if not env.enabled or device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if env.local_rank >= count:
        raise ValueError(
            f"LOCAL_RANK {env.local_rank} has no GPU: {count} visible (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); start at most {count} processes per "
            "machine (torchrun --nproc_per_node)"
        )
    return torch.device("cuda", env.local_rank)


class Group:
    """The ranks of one training job, or a single process (``world_size`` 1: every method a no-op).

    Args:
        env: This process's place in the job.
        device: The device collectives run on (NCCL needs CUDA tensors).
    """

    def __init__(self, env: DistEnv, device: torch.device) -> None:
        self.env = env
        self.device = device
        self._wrapped: nn.Module | None = None
        self._trainable: tuple[bool, ...] | None = None

    @property
    def world_size(self) -> int:
        """Number of ranks."""
        return self.env.world_size

    @property
    def rank(self) -> int:
        """This rank."""
        return self.env.rank

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes the run folder (rank 0)."""
        return self.env.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in DDP, rebuilt when its set of trainable parameters changed.

        Call after every change of ``requires_grad`` (:func:`~models.training.engine.apply_schedule`)
        and train through the result; see the module docstring for why it is rebuilt. A
        single process gets ``module`` back.
        """
        if not self.env.enabled:
            return module
        trainable = tuple(p.requires_grad for p in module.parameters())
        if self._wrapped is None or trainable != self._trainable:
            # Drop the old wrapper first: its reducer's autograd hooks go with it.
            self._wrapped = None
            self._wrapped = DistributedDataParallel(
                module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False,
            )
            self._trainable = trainable
            log.info("rank %d: DDP wrapper built over %d trainable of %d parameter tensors",
                     self.rank, sum(trainable), len(trainable))
        return self._wrapped

    def _gather(self, values: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """``(world_size, len(values))`` float64 on the CPU, row ``r`` from rank ``r``."""
        if isinstance(values, torch.Tensor):
            local = values.to(self.device, torch.float64).reshape(-1)
        else:
            local = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        rows = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(rows, local)
        return torch.stack(rows).cpu()

    def sum_metrics(self, result: Mapping[str, float] | None) -> dict[str, float]:
        """All ranks' ``{"loss", "accuracy", "n"}`` (means over ``n`` images) as one result.

        The sums are gathered and added up in rank order on every rank, so every rank gets
        the same floats. ``None`` stands for a rank that saw no image (an empty
        validation shard). A single process gets ``result`` back unchanged.

        Raises:
            ValueError: No rank saw an image.
        """
        if not self.env.enabled:
            if result is None:
                raise ValueError("no image was seen")
            return dict(result)
        n = 0 if result is None else int(result["n"])
        local = [0.0, 0.0, 0.0] if result is None else [
            float(result["loss"]) * n, round(float(result["accuracy"]) * n), float(n)
        ]
        total = self._gather(local)
        loss_sum, correct, seen = (sum(float(v) for v in total[:, i].tolist()) for i in range(3))
        if seen == 0:
            raise ValueError("no rank saw an image")
        return {"loss": loss_sum / seen, "accuracy": correct / seen, "n": int(seen)}

    def max(self, value: float) -> float:
        """The largest ``value`` over the ranks (e.g. an epoch's seconds)."""
        if not self.env.enabled:
            return value
        return float(self._gather([value]).max())

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
        if not self.env.enabled:
            return
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)

    def check_in_sync(self, module: nn.Module) -> None:
        """Check that every parameter and buffer of ``module`` is the same on all ranks.

        Compares one float64 sum per tensor (the same kernel on the same values gives the
        same bits), so it costs one pass over the weights and a small gather.

        Raises:
            RuntimeError: Some tensor differs between ranks, named.
        """
        if not self.env.enabled:
            return
        named = list(module.named_parameters()) + list(module.named_buffers())
        table = self._gather(torch.stack([t.detach().double().sum() for _, t in named]))
        differs = [name for j, (name, _) in enumerate(named) if not bool((table[:, j] == table[0, j]).all())]
        if differs:
            raise RuntimeError(
                f"the model replicas differ between the {self.world_size} ranks in {len(differs)} tensor(s), "
                f"first {differs[:3]}: gradients were not averaged for them (a parameter unfrozen without "
                "rebuilding the DDP wrapper?); the run cannot continue"
            )

    def barrier(self) -> None:
        """Wait for every rank (after rank 0 wrote the run folder)."""
        if self.env.enabled:
            dist.barrier()


@contextmanager
def process_group(env: DistEnv, device: torch.device) -> Iterator[Group]:
    """Join the job's process group (NCCL on CUDA, gloo on the CPU) for the ``with`` block.

    A single process (``env.world_size`` 1) gets a :class:`Group` that does nothing. A
    process group the caller already initialised is used and left alone; one opened here
    is destroyed at the end, also after an error.

    Args:
        env: From :func:`current_env`.
        device: This rank's device, from :func:`device_for`.
    """
    owned = False
    if env.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        owned = True
    try:
        if env.enabled and dist.get_world_size() != env.world_size:
            raise ValueError(
                f"the process group has {dist.get_world_size()} ranks but WORLD_SIZE is {env.world_size}"
            )
        yield Group(env, device)
    finally:
        if owned:
            dist.destroy_process_group()


def launch_command(nproc: int, argv: Sequence[str], *, module: str = "models.training.torchrun_entry",
                   python: str | None = None) -> list[str]:
    """The ``torchrun`` command for ``nproc`` processes on this machine running ``python -m module``.

    ``python -m torch.distributed.run`` is ``torchrun`` with the same interpreter (and
    virtualenv) as ``python``. ``--standalone`` starts a rendezvous on localhost at a free port.

    Args:
        nproc: Processes, one per GPU (``torch.cuda.device_count()``).
        argv: Arguments of the module, e.g. ``["--config", "RUN/config.json"]``.
        module: The module every process runs.
        python: The interpreter; default this one.

    Example:
        >>> launch_command(4, ["--config", "runs/m1/config.json"], python="python")  # doctest: +NORMALIZE_WHITESPACE
        ['python', '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=4', '-m', 'models.training.torchrun_entry',
         '--config', 'runs/m1/config.json']
    """
    if nproc < 1:
        raise ValueError(f"nproc {nproc} must be at least 1")
    return [python or sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", module, *map(str, argv)]


def train_with_torchrun(cfg: Any, nproc: int, *, timeout: float | None = None,
                        env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run :func:`models.training.fit.fit` on ``nproc`` processes (one per GPU) and return its result.

    For a caller that runs in one process, such as the Prefect ``fit-model`` task: it
    writes the configuration to a temporary JSON, runs :func:`launch_command` and waits,
    the ranks' logs going to this process's stdout and stderr. Per-epoch ``progress``
    callbacks are not available across processes; ``history.csv`` grows after each epoch.

    Args:
        cfg: The :class:`~tasks.core.config.TrainConfig`.
        nproc: Processes on this machine.
        timeout: Seconds before the job is killed (``subprocess.TimeoutExpired``).
        env: Environment of the job; default this process's.

    Returns:
        What :func:`models.training.fit.fit` returned on rank 0.

    Raises:
        RuntimeError: ``torchrun`` failed; its output says which rank failed and why.
    """
    with tempfile.TemporaryDirectory(prefix="tomoflow-torchrun-") as tmp:
        config_path, summary_path = Path(tmp) / "config.json", Path(tmp) / "summary.json"
        config_path.write_text(json.dumps(cfg.model_dump(mode="json"), indent=2), encoding="utf-8")
        command = launch_command(nproc, ["--config", str(config_path), "--summary", str(summary_path)])
        job_env = dict(os.environ if env is None else env)
        job_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), job_env.get("PYTHONPATH", "")) if p)
        log.info("running %s", " ".join(command))
        done = subprocess.run(command, env=job_env, cwd=_ROOT, timeout=timeout, check=False)
        if done.returncode != 0 or not summary_path.is_file():
            raise RuntimeError(
                f"distributed training failed (exit status {done.returncode}) for run_dir '{cfg.run_dir}': "
                f"{' '.join(command)}; the failing rank's error is in the output above"
            )
        return json.loads(summary_path.read_text(encoding="utf-8"))
