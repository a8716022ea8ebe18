"""Several processes ("ranks") working on one run together, through torch.distributed, and the few collective
operations an epoch needs.

Every rank holds all the images (in device memory, or reads them from the run's file: `loader`) and extracts the features of
its shard, a contiguous range of rows (`shard`). PCA and k-means sum over the shards (`all_reduce_sum`); the
cluster ids are gathered on every rank (`all_gather_rows`), so the balanced resample is drawn once, identically
everywhere, and each training batch is split between the ranks. Each rank finds the nearest neighbours of its
own shard's points while the shards of all ranks pass by one at a time (`each_rank_rows`). The writer (rank 0)
alone writes the run, and the features it writes are gathered on it alone (`gather_rows`).

In a single process (no process group) every function here does nothing or returns its input, so the epoch has
one code path whatever the number of ranks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from deepcluster.errors import ConfigError

WRITER = 0  # the rank that writes the run's files
TIMEOUT_SECONDS = 1800  # a collective not met by every rank in this time fails the run (a rank died or hangs)


_groups: dict[str, Any] = {}  # process groups by use


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
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=TIMEOUT_SECONDS), device_id=_device_id(device))
    _groups["batch_norm"] = dist.new_group()  # its own, so its collectives never interleave with the gradients'


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    _groups.clear()


def _device_id(device: torch.device) -> torch.device | None:
    return device if device.type == "cuda" else None


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank (before `start`): its machine's GPU number LOCAL_RANK (set by torchrun) for cuda,
    the CPU otherwise."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
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
    padded, counts = _padded_shard(tensor)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return _unpadded(parts, counts)


def gather_rows(tensor: torch.Tensor) -> torch.Tensor | None:
    """Every rank's rows of `tensor`, concatenated in rank order, on the writer alone (None on the other ranks):
    what the writer writes needs no copy on the others."""
    if world_size() == 1:
        return tensor
    padded, counts = _padded_shard(tensor)
    parts = [torch.empty_like(padded) for _ in counts] if is_writer() else None
    dist.gather(padded, parts, dst=WRITER)
    return None if parts is None else _unpadded(parts, counts)


def each_rank_rows(tensor: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """Every rank's rows of `tensor`, one rank's at a time in rank order (broadcast from that rank), each with the
    index of its first row among the rows of all ranks: all the rows pass by without being held at once."""
    counts = row_counts(len(tensor), tensor.device)
    start = 0
    for source, count in enumerate(counts):
        rows = tensor if source == rank() else tensor.new_empty((count, *tensor.shape[1:]))
        if world_size() > 1:
            dist.broadcast(rows, src=source)
        yield start, rows
        start += count


def _padded_shard(tensor: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """This rank's rows padded with zeros to the largest shard (collectives exchange equal shapes), and the
    number of rows of every rank."""
    counts = row_counts(len(tensor), tensor.device)
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: len(tensor)] = tensor
    return padded, counts


def _unpadded(parts: list[torch.Tensor], counts: list[int]) -> torch.Tensor:
    """The padded shards of every rank, their padding dropped, concatenated in rank order."""
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


def synchronized(module: nn.Module, batch_norm: bool = False) -> nn.Module:
    """`module` trained as one over the ranks, or the module itself in a single process: its gradients are
    averaged over the ranks in backward (DistributedDataParallel), and with `batch_norm` its batch norms take the
    statistics of the whole batch (`RankBatchNorm`, in place) instead of those of each rank's part."""
    if world_size() == 1:
        return module
    for parent in list(module.modules()) if batch_norm else []:
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, RankBatchNorm):
                setattr(parent, name, RankBatchNorm.replacing(child))
    device = next(module.parameters()).device
    return nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


class RankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the whole batch, all ranks' parts of it together (as
    SyncBatchNorm, which needs GPUs, but on any device): each rank's per-channel mean and variance, combined
    over the ranks in float64 by one differentiable all-reduce. Evaluation uses the running statistics, as batch
    norm does. Its parameters and buffers are those of the batch norm it replaces, so the state dict and the
    optimizer are unchanged."""

    @classmethod
    def replacing(cls, norm: nn.modules.batchnorm._BatchNorm) -> RankBatchNorm:
        rank_norm = cls(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
        rank_norm.weight, rank_norm.bias = norm.weight, norm.bias
        for name, buffer in norm.named_buffers(recurse=False):
            setattr(rank_norm, name, buffer)
        return rank_norm.train(norm.training)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"batch norm expects (N, C, ...) inputs, got {input.dim()} dimensions")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(input)
        values = input.float()
        dims = [0, *range(2, values.dim())]
        shape = [1, -1] + [1] * (values.dim() - 2)
        local_variance, local_mean = torch.var_mean(values, dims, correction=0)
        local_count = values.numel() // values.shape[1]
        moments = torch.stack([local_mean, local_variance + local_mean * local_mean]).double() * local_count
        count = values.new_tensor([[local_count]], dtype=torch.float64).expand(1, self.num_features)
        totals = _SumOverRanks.apply(torch.cat([moments, count]))  # one collective a call: sums of x, x², counts
        count = totals[2]
        mean = totals[0] / count
        variance = (totals[1] / count - mean * mean).clamp(min=0)
        tracked = self.num_batches_tracked
        if self.running_mean is not None and self.running_var is not None and tracked is not None:
            with torch.no_grad():
                tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1 / float(tracked)  # None: a plain average
                self.running_mean.lerp_(mean.float(), factor)
                self.running_var.lerp_((variance * count / (count - 1)).float(), factor)
        scale = torch.rsqrt(variance + self.eps).float()
        if self.affine:
            scale = scale * self.weight
        shift = -mean.float() * scale + (self.bias if self.affine else 0)
        return torch.addcmul(shift.view(shape), values, scale.view(shape)).to(input.dtype)


class _SumOverRanks(torch.autograd.Function):
    """The sum over ranks of a tensor, differentiable: the gradient of each rank's input is the sum over ranks of
    the gradients of the output. In the batch norms' own process group."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total, group=_groups["batch_norm"])
        return total

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor) -> torch.Tensor:
        total = gradient.clone()
        dist.all_reduce(total, group=_groups["batch_norm"])
        return total
