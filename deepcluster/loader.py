"""Batches of a run's inputs on the model's device, wherever the inputs lie.

Inputs that fit the device's memory budget (config `device_budget_gb`) are read into its memory once and
indexed in place. Larger ones stay in the run's input file (`FileRows`): each batch is read from it with plain
file reads, so the process holds the batch and nothing more, whatever the file's size. On CUDA the batch goes
through pinned memory while the previous batch computes (one batch of prefetch, in a background thread); on
the CPU the host is the device, and the operating system's page cache keeps what fits of the file. The
batches are the same either way, and so are the results.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar, overload

import numpy as np
import torch

Item = TypeVar("Item")


class FileRows:
    """The rows (first axis) of a uint8 .npy file, read from the file when they are asked for, never mapped:
    reading through a memory mapping would keep every page it touched in the process's memory, up to the whole
    file.

    Indexed as a tensor is: a slice is a view (nothing read), a tensor of indices reads those rows (`gather`);
    `read` reads a view's rows. `rows` selects the file's rows the object holds, in their order: a range, or an
    array of row indices. Consecutive rows (a range, or an array of consecutive indices) are read in one piece, any
    others each on its own.
    """

    device = torch.device("cpu")
    dtype = torch.uint8

    def __init__(self, path: Path, rows: range | np.ndarray | None = None) -> None:
        header = np.load(path, mmap_mode="r", allow_pickle=False)  # the shape and the header's length, not the rows
        if header.dtype != np.uint8:
            raise ValueError(f"{path} holds {header.dtype}, not the uint8 rows FileRows reads")
        self.path, self.offset = path, header.offset
        self.row_bytes = math.prod(header.shape[1:])
        self.rows = range(len(header)) if rows is None else _as_range(rows)
        last = (self.rows[-1] if isinstance(self.rows, range) else int(self.rows.max())) if len(self.rows) else -1
        if last >= len(header):
            raise IndexError(f"{path} has {len(header)} rows, not row {last}")
        self.shape = torch.Size((len(self.rows), *header.shape[1:]))
        self.nbytes = len(self.rows) * self.row_bytes

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, key: slice) -> FileRows: ...

    @overload
    def __getitem__(self, key: torch.Tensor) -> torch.Tensor: ...

    def __getitem__(self, key: slice | torch.Tensor) -> FileRows | torch.Tensor:
        if isinstance(key, slice):
            if key.step not in (None, 1):
                raise ValueError("a view of FileRows is contiguous: a slice with a step is not one")
            return FileRows(self.path, self.rows[key])
        return self._read([self.rows[index] for index in key.tolist()])

    def read(self) -> torch.Tensor:
        """The view's rows, in one read where they are a range of the file's."""
        if not isinstance(self.rows, range):
            return self._read(self.rows.tolist())
        count = len(self.rows) * self.row_bytes
        start = self.offset + (self.rows.start if self.rows else 0) * self.row_bytes
        data = np.fromfile(self.path, np.uint8, count, offset=start) if count else np.empty(0, np.uint8)
        if len(data) != count:
            raise OSError(f"{self.path} ends before row {self.rows[-1]}: it was truncated")
        return torch.from_numpy(data.reshape(self.shape))

    def _read(self, indices: Sequence[int]) -> torch.Tensor:
        data = np.empty((len(indices), self.row_bytes), dtype=np.uint8)
        descriptor = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for position in sorted(range(len(indices)), key=indices.__getitem__):  # in the file's order
                row = data[position]
                if os.preadv(descriptor, [row], self.offset + indices[position] * self.row_bytes) != len(row):
                    raise OSError(f"{self.path} ends before row {indices[position]}: it was truncated")
        finally:
            os.close(descriptor)
        return torch.from_numpy(data.reshape(len(indices), *self.shape[1:]))


def _as_range(rows: range | np.ndarray) -> range | np.ndarray:
    """`rows` as a range where they are consecutive indices, else as they are."""
    if isinstance(rows, range) or not len(rows) or int(rows[-1]) - int(rows[0]) != len(rows) - 1:
        return rows
    return range(int(rows[0]), int(rows[-1]) + 1) if bool(np.all(np.diff(rows) == 1)) else rows


Inputs = torch.Tensor | FileRows  # uint8 (N, 1, S, S): on the model's device, or the rows of a run's input file


def open_inputs(path: Path, device: torch.device, budget_gb: float) -> Inputs:
    """A run's input file (uint8 N x 1 x S x S .npy) on `device` where it fits `budget_gb` GiB, else its
    `FileRows`."""
    rows = FileRows(path)
    if rows.nbytes <= budget_gb * 2**30:
        return rows.read().to(device)
    return rows


def place_inputs(inputs: np.ndarray, device: torch.device, budget_gb: float) -> torch.Tensor:
    """Inputs in memory, uint8 (N, 1, S, S), on `device` where they fit `budget_gb` GiB, else on the host."""
    if inputs.nbytes <= budget_gb * 2**30:
        return torch.from_numpy(np.array(inputs)).to(device)  # a copy: the array may be read-only
    return torch.from_numpy(inputs)


def gather(inputs: Inputs, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
    """inputs[indices] (indices where the inputs lie) on `device`; from the host through pinned memory on CUDA."""
    return to_device(inputs[indices], device)


def to_device(rows: torch.Tensor | FileRows, device: torch.device) -> torch.Tensor:
    if isinstance(rows, FileRows):
        rows = rows.read()
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
