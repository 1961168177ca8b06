"""Distributed training under ``torchrun``: process group, ranks, collectives, samplers, DDP.

``torchrun --nproc_per_node=N -m src train ...`` starts N processes and gives each ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``) in its environment. :func:`init_distributed` reads them and
joins the process group; without them it does nothing, and every function here behaves as for a single process
(rank 0 of 1), so the same code runs with and without ``torchrun``.

Two process groups:

* the default one (NCCL on CUDA, gloo on CPU) carries the training collectives: DDP's gradient all-reduce and the
  metric sums. Its timeout (``$LANDMARK_DIST_TIMEOUT`` seconds, default 600) bounds how long a process waits for
  a peer that stopped answering, so a lost machine fails the job instead of hanging it forever;
* a gloo group with a long timeout (``$LANDMARK_DIST_SETUP_TIMEOUT``, default 6 h) for waits on one process's
  one-off work (checking every photo, mean/std, feature extraction) and for Python objects (checkpoints and
  features travel through CPU memory, not the GPU).

When a process dies, torchrun's agent stops the others and exits non-zero, naming the failed rank.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import Sampler

TIMEOUT_ENV = "LANDMARK_DIST_TIMEOUT"
SETUP_TIMEOUT_ENV = "LANDMARK_DIST_SETUP_TIMEOUT"
DEFAULT_TIMEOUT_S = 600
DEFAULT_SETUP_TIMEOUT_S = 6 * 3600

_cpu_group = None  # the gloo group for objects and long waits (see the module docstring)


def _dist():
    return torch.distributed


def is_distributed() -> bool:
    """True inside an initialised process group (a torchrun job, after :func:`init_distributed`)."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return _dist().get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return _dist().get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``; 0 for a single process)."""
    return int(os.environ.get("LOCAL_RANK", 0)) if is_distributed() else 0


def get_local_world_size() -> int:
    """Processes on this machine (``LOCAL_WORLD_SIZE``, set by torchrun; 1 for a single process)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0, or a single process: the one that writes checkpoints, history, plots, and prints."""
    return get_rank() == 0


def is_local_main_process() -> bool:
    """Local rank 0: the one process per machine that writes that machine's caches."""
    return get_local_rank() == 0


def cpu_share(n_cpus: int) -> int:
    """This process's share of ``n_cpus`` when several training processes run on one machine."""
    return max(1, int(n_cpus) // max(1, get_local_world_size()))


def _env_seconds(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        seconds = int(float(value)) if value.strip() else default
    except ValueError:
        raise ValueError(f"${name} must be a number of seconds, got {value!r}") from None
    if seconds <= 0:
        raise ValueError(f"${name} must be a positive number of seconds, got {value!r}")
    return seconds


def launched_by_torchrun() -> bool:
    """True when the environment names this process's rank and the job's size (torchrun, or any env:// launch)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str | torch.device | None = None, backend: str | None = None,
                     quiet_other_ranks: bool = True) -> bool:
    """Join the torchrun job described by the environment; returns whether this is a distributed run.

    No ``RANK``/``WORLD_SIZE`` in the environment (a plain ``python -m src train``): nothing happens. Otherwise
    the backend is NCCL when training on CUDA (``device``, else the best available: :func:`src.helpers.get_device`)
    and gloo on a CPU; on CUDA each process takes the GPU ``LOCAL_RANK``. ``quiet_other_ranks``: ranks other than
    0 log errors only (every process runs the same steps; one report of them is enough). Calling it again in an
    initialised process is a no-op.
    """
    global _cpu_group
    if is_distributed() or not launched_by_torchrun():
        return is_distributed()
    from .helpers import get_device  # noqa: PLC0415

    dist = _dist()
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run without torchrun")
    dev = get_device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend is None:
        backend = "nccl" if dev.type == "cuda" and dist.is_nccl_available() else "gloo"
    if dev.type == "cuda":
        n_gpus = torch.cuda.device_count()
        if local_rank >= n_gpus:
            raise RuntimeError(f"process LOCAL_RANK={local_rank} has no GPU of its own: this machine has {n_gpus}; "
                               f"start at most --nproc_per_node={n_gpus} processes per machine")
        torch.cuda.set_device(local_rank)
    timeout = _env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    setup_timeout = max(timeout, _env_seconds(SETUP_TIMEOUT_ENV, DEFAULT_SETUP_TIMEOUT_S))
    kwargs = {"device_id": torch.device("cuda", local_rank)} if backend == "nccl" else {}
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout), **kwargs)
    _cpu_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=setup_timeout))
    if quiet_other_ranks and dist.get_rank() != 0:
        logging.getLogger(__package__ or "src").setLevel(logging.ERROR)
    return True


def cleanup() -> None:
    """Leave the process group (at the end of a run; a no-op for a single process)."""
    global _cpu_group
    if is_distributed():
        _dist().destroy_process_group()
    _cpu_group = None


def local_device(device: str | torch.device) -> torch.device:
    """``cuda`` -> this process's own GPU (``cuda:LOCAL_RANK``) in a distributed run; anything else unchanged."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", get_local_rank())
    return device


# --------------------------------------------------------------------------------------------------------------
# Collectives (each a no-op, or the identity, for a single process)
# --------------------------------------------------------------------------------------------------------------

def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over all processes (a new tensor on ``tensor``'s device)."""
    if not is_distributed():
        return tensor
    dist = _dist()
    work = tensor.detach().clone()
    if dist.get_backend() == "nccl" and work.device.type != "cuda":  # NCCL reduces CUDA tensors only
        work = work.cuda()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def all_true(flag: bool) -> bool:
    """True when ``flag`` is true in every process (all processes must call it)."""
    if not is_distributed():
        return bool(flag)
    return int(all_reduce_sum(torch.tensor([int(bool(flag))]))[0]) == get_world_size()


def barrier() -> None:
    """Wait until every process gets here (long timeout: see the module docstring)."""
    if is_distributed():
        _dist().barrier(group=_cpu_group)


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` in every process (pickled, through CPU memory)."""
    if not is_distributed():
        return obj
    box = [obj if get_rank() == src else None]
    _dist().broadcast_object_list(box, src=src, group=_cpu_group)
    return box[0]


def all_gather_object(obj: Any) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` in every process."""
    if not is_distributed():
        return [obj]
    out: list = [None] * get_world_size()
    _dist().all_gather_object(out, obj, group=_cpu_group)
    return out


def on_main_process(fn: Callable, *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` run by the main process only; every process gets its result or raises its error.

    For what only rank 0 may see (the files it wrote, on a multi-machine job without a shared file system)
    and what all processes must agree on (does ``last.pt`` exist, what does it hold).
    """
    if not is_distributed():
        return fn(*args, **kwargs)
    result, error = None, None
    if is_main_process():
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # handed to every process, so all fail alike instead of waiting for rank 0
            error = exc
    result, error = broadcast_object((result, _picklable(error)))
    if error is not None:
        raise error
    return result


def _picklable(exc: BaseException | None) -> BaseException | None:
    if exc is None:
        return None
    import pickle  # noqa: PLC0415

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # an exception type that does not survive pickling: keep its message
        return RuntimeError(str(exc) or type(exc).__name__)


@contextlib.contextmanager
def local_main_process_first() -> Iterator[None]:
    """Run the block in local rank 0 first, then in the other processes (which then find its caches).

    For one-off work with caches on disk (checking photos, mean/std, downloads): done once per machine instead of
    once per process. An error in the first process ends the job (torchrun stops the others).
    """
    if not is_distributed():
        yield
        return
    first = is_local_main_process()
    if not first:
        barrier()
    yield
    if first:
        barrier()


class PeerLostError(RuntimeError):
    """Another process of the job failed or stopped answering while this one waited for it."""


# What the backends say when a peer is gone (gloo raises a bare RuntimeError with its transport's message).
_PEER_LOST_SIGNS = ("gloo/transport", "NCCL communicator", "Watchdog caught collective operation timeout")


def _is_peer_lost(exc: BaseException) -> bool:
    dist_error = getattr(_dist(), "DistError", None)
    return (dist_error is not None and isinstance(exc, dist_error)) or any(s in str(exc) for s in _PEER_LOST_SIGNS)


@contextlib.contextmanager
def explain_lost_peers() -> Iterator[None]:
    """In a distributed run, turn a backend's message about a vanished peer into one that says what happened."""
    try:
        yield
    except Exception as exc:
        if not is_distributed() or isinstance(exc, PeerLostError) or not _is_peer_lost(exc):
            raise
        detail = " ".join(str(exc).split())[:300]
        raise PeerLostError(f"rank {get_rank()} lost contact with another process of this job, which failed or "
                            f"stopped answering (torchrun's report names the rank that failed first): {detail}"
                            ) from exc


# --------------------------------------------------------------------------------------------------------------
# Data: each process its share
# --------------------------------------------------------------------------------------------------------------

class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, rank + 2 * world, ...`` of a data set, in order, without padding.

    For evaluation: every sample is seen exactly once by exactly one process, so the summed metrics are exactly
    those of a single process over the whole set (:class:`torch.utils.data.DistributedSampler` instead repeats a
    few samples to give every process as many, which DDP training needs).
    """

    def __init__(self, data_source, num_replicas: int | None = None, rank: int | None = None):
        self.n = len(data_source)
        self.num_replicas = get_world_size() if num_replicas is None else int(num_replicas)
        self.rank = get_rank() if rank is None else int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not in [0, {self.num_replicas})")

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))


def distributed_sampler(dataset, shuffle: bool, seed: int = 42) -> Sampler | None:
    """This process's sampler in a distributed run, None otherwise.

    Training (``shuffle=True``): :class:`~torch.utils.data.DistributedSampler`, a shuffle seeded by ``seed`` and
    the epoch (call ``set_epoch``), the same number of samples in every process (DDP steps in lockstep), padded
    with a few repeated samples when the data does not divide evenly. Evaluation: :class:`ShardSampler`, exact.
    """
    if not is_distributed():
        return None
    if shuffle:
        from torch.utils.data.distributed import DistributedSampler  # noqa: PLC0415

        return DistributedSampler(dataset, shuffle=True, seed=int(seed), drop_last=False)
    return ShardSampler(dataset)


def unshard(parts: Sequence[Sequence]) -> list:
    """Items of a :class:`ShardSampler` run gathered from every process, back in the data set's order."""
    out = []
    for i in range(max((len(p) for p in parts), default=0)):
        out.extend(p[i] for p in parts if i < len(p))
    return out


def block_range(n: int, rank: int | None = None, world_size: int | None = None) -> range:
    """This process's contiguous block of ``range(n)``; blocks differ in size by at most one and, concatenated in
    rank order, give ``range(n)`` (so gathered results keep the data set's order)."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    start = n * rank // world_size
    return range(start, n * (rank + 1) // world_size)


# --------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------

def wrap_ddp(model: nn.Module, device: str | torch.device | None = None) -> nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` in a distributed run, else ``model``.

    DDP copies rank 0's weights and buffers to every process when it is built and averages the gradients over
    the processes in ``backward()``, so the weights stay identical everywhere. Train with the wrapper, save and
    evaluate the wrapped ``model`` itself (no ``module.`` prefix in checkpoints, no collectives in evaluation).
    A model without trainable parameters has nothing to synchronise and is returned as it is.
    """
    if not is_distributed() or not any(p.requires_grad for p in model.parameters()):
        return model
    from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

    device = torch.device(device) if device is not None else next(model.parameters()).device
    device_ids = [device.index if device.index is not None else get_local_rank()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def sync_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (batch-norm running statistics) to every process.

    DDP sends them before every training forward, but each process then updates its own copy with its own batch:
    after an epoch they differ a little. Synchronised before evaluation, every process evaluates its shard with
    the very model rank 0 saves.
    """
    if not is_distributed():
        return
    dist = _dist()
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=src)


def padded_size(n: int, world_size: int | None = None) -> int:
    """Samples per epoch a :class:`~torch.utils.data.DistributedSampler` gives over all processes (``n`` rounded
    up to a multiple of the process count: the training metrics count those few repeats too)."""
    world_size = get_world_size() if world_size is None else world_size
    return int(math.ceil(n / world_size)) * world_size
