"""Several processes ("ranks") working on one run together, through torch.distributed, and the few collective
operations an epoch needs.

Every rank holds all the images (in device memory or memory-mapped from the run) and extracts the features of
its shard, a contiguous range of rows (`shard`). PCA and k-means sum over the shards (`all_reduce_sum`); the
cluster ids are gathered on every rank (`all_gather_rows`), so the balanced resample is drawn once, identically
everywhere, and each training batch is split between the ranks. The writer (rank 0) alone writes the run.

In a single process (no process group) every function here does nothing or returns its input, so the epoch has
one code path whatever the number of ranks.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from deepcluster.errors import ConfigError

WRITER = 0  # the rank that writes the run's files
TIMEOUT_SECONDS = 1800  # a collective not met by every rank in this time fails the run (a rank died or hangs)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_writer() -> bool:
    return rank() == WRITER


def start(device: torch.device) -> None:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR, ...):
    NCCL between GPUs, gloo between CPU processes."""
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ConfigError(f"a distributed run is started by torchrun, which sets {', '.join(missing)}: not set here")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=TIMEOUT_SECONDS), device_id=_device_id(device))


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _device_id(device: torch.device) -> torch.device | None:
    return device if device.type == "cuda" else None


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank: its local GPU (LOCAL_RANK) for cuda, the CPU otherwise."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shard(count: int) -> slice:
    """This rank's rows of `count`: contiguous ranges in rank order, of equal size (up to one)."""
    index, size = rank(), world_size()
    return slice(count * index // size, count * (index + 1) // size)


def per_rank(stream: str) -> str:
    """The name of this rank's own random stream `stream` (rank 0 keeps the name, as a single process has it)."""
    return stream if rank() == 0 else f"{stream}-rank{rank()}"


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of `tensor`, in place; returns it."""
    if world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def row_counts(rows: int, device: torch.device) -> list[int]:
    """The number of rows of every rank, in rank order."""
    if world_size() == 1:
        return [rows]
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([rows], device=device))
    return [int(count) for count in counts]


def row_offset(rows: int, device: torch.device) -> tuple[int, int]:
    """(the index of this rank's first row among the rows of all ranks in rank order, the rows of all ranks)."""
    counts = row_counts(rows, device)
    return sum(counts[: rank()]), sum(counts)


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of `tensor`, concatenated in rank order, on every rank (the shards may differ in size)."""
    if world_size() == 1:
        return tensor
    counts = row_counts(len(tensor), tensor.device)
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])


def rows_at(local: torch.Tensor, indices: torch.Tensor, offset: int) -> torch.Tensor:
    """The rows at global `indices` (int64, among all ranks' rows in rank order) on every rank, each from the rank
    that holds it. local: this rank's rows, the first of them at global index `offset`."""
    indices = indices.to(local.device)
    if world_size() == 1:
        return local[indices]
    mine = (indices >= offset) & (indices < offset + len(local))
    rows = local.new_zeros((len(indices), *local.shape[1:]))
    rows[mine] = local[indices[mine] - offset]
    return all_reduce_sum(rows)  # each row is nonzero on one rank only: the sum is exact


def broadcast_from_writer(tensor: torch.Tensor) -> torch.Tensor:
    """The writer's `tensor` on every rank (in place: same shape and dtype everywhere); returns it."""
    if world_size() > 1:
        dist.broadcast(tensor, WRITER)
    return tensor


def synchronized(module: nn.Module) -> nn.Module:
    """`module` whose gradients are averaged over the ranks in backward (DistributedDataParallel), or the module
    itself in a single process."""
    if world_size() == 1:
        return module
    device = next(module.parameters()).device
    return nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)
