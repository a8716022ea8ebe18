"""Batches of a run's inputs on the model's device, wherever the inputs lie.

Inputs that fit the device's memory budget (config `device_budget_gb`) are read into its memory once and
indexed in place. Larger ones stay in the run's memory-mapped input file: each batch is gathered from it
(only its pages are read). On CUDA the batch goes through pinned memory while the previous batch computes
(one batch of prefetch, in a background thread); on the CPU the host is the device and the file is read
where it lies, the operating system's page cache holding what fits. The batches are the same either way,
and so are the results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

Item = TypeVar("Item")


def place_inputs(inputs: np.ndarray, device: torch.device, budget_gb: float) -> torch.Tensor:
    """The inputs, uint8 (N, 1, S, S), on `device` where they fit `budget_gb` GiB, else on the host as they are
    (a memory-mapped array stays memory-mapped)."""
    if inputs.nbytes <= budget_gb * 2**30:
        return torch.from_numpy(np.array(inputs)).to(device)  # read whole, then moved
    return torch.from_numpy(inputs)


def gather(inputs: torch.Tensor, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
    """inputs[indices] (indices where the inputs lie) on `device`; from the host through pinned memory on CUDA."""
    return to_device(inputs[indices], device)


def to_device(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    if rows.device == device:
        return rows
    if device.type == "cuda":
        return rows.pin_memory().to(device, non_blocking=True)
    return rows.to(device)


def prefetched(items: Iterable[Item], fetch: Callable[[Item], torch.Tensor], ahead: bool) -> Iterator[torch.Tensor]:
    """fetch(item) for each item, in order; with `ahead`, the next one is fetched in a background thread while the
    current one is used."""
    if not ahead:
        yield from map(fetch, items)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="deepcluster-prefetch") as pool:
        iterator = iter(items)
        first = next(iterator, None)
        if first is None:
            return
        pending = pool.submit(fetch, first)
        for item in iterator:
            current, pending = pending.result(), pool.submit(fetch, item)
            yield current
        yield pending.result()
