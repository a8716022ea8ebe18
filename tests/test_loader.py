"""Inputs held on the device or read from their file a batch at a time: the same results."""

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from deepcluster import runs, runtime
from deepcluster.artifacts import RunLayout
from deepcluster.epoch import run_epoch
from deepcluster.loader import FileRows, gather, open_inputs, prefetched
from tests.helpers import tiny_config


def test_inputs_over_the_budget_are_read_from_their_file_a_batch_at_a_time(tmp_path: Path):
    path = tmp_path / "inputs.npy"
    rows = np.arange(5 * 16, dtype=np.uint8).reshape(5, 1, 4, 4)
    np.save(path, rows)
    held = open_inputs(path, torch.device("cpu"), budget_gb=1.0)
    streamed = open_inputs(path, torch.device("cpu"), budget_gb=0.0)
    assert isinstance(held, torch.Tensor) and torch.equal(held, torch.from_numpy(rows))
    assert isinstance(streamed, FileRows) and streamed.shape == held.shape and len(streamed) == 5
    indices = torch.tensor([4, 0, 2, 2])  # any order, repeats
    assert torch.equal(gather(streamed, indices, torch.device("cpu")), held[indices])
    view = streamed[1:4]  # a view, as a tensor's slice: nothing read until asked
    assert isinstance(view, FileRows) and torch.equal(view.read(), held[1:4])
    assert torch.equal(view[torch.tensor([2, 0])], held[torch.tensor([3, 1])])
    assert view[3:].read().shape == (0, 1, 4, 4)
    with open(path, "r+b") as handle:  # a file cut short is an error that says so, never rows of zeros
        handle.truncate(path.stat().st_size - 1)
    with pytest.raises(OSError, match="truncated"):
        streamed[torch.tensor([4])]
    with pytest.raises(OSError, match="truncated"):
        streamed.read()
    assert torch.equal(streamed[torch.tensor([3])], held[3:4])


def test_file_rows_of_a_selection_read_those_rows_in_its_order(tmp_path: Path):
    path = tmp_path / "inputs.npy"
    rows = np.arange(6 * 4, dtype=np.uint8).reshape(6, 1, 2, 2)
    np.save(path, rows)
    keep = np.array([1, 2, 4, 5])
    selected = FileRows(path, keep)
    assert len(selected) == 4 and selected.shape == (4, 1, 2, 2)
    assert torch.equal(selected.read(), torch.from_numpy(rows[keep]))
    assert torch.equal(selected[2:].read(), torch.from_numpy(rows[[4, 5]]))  # a view of the selection
    assert torch.equal(selected[torch.tensor([3, 0])], torch.from_numpy(rows[[5, 1]]))
    with pytest.raises(IndexError, match="has 6 rows, not row 6"):
        FileRows(path, np.array([0, 6]))


def test_consecutive_rows_are_read_in_one_piece_wherever_they_start(tmp_path: Path, monkeypatch):
    path = tmp_path / "inputs.npy"
    rows = np.arange(6 * 4, dtype=np.uint8).reshape(6, 1, 2, 2)
    np.save(path, rows)
    monkeypatch.setattr(FileRows, "_read", lambda self, indices: pytest.fail(f"rows {indices} read one by one"))
    middle = FileRows(path, np.array([2, 3, 4]))  # e.g. one class of a folder sorted by class
    assert middle.rows == range(2, 5) and torch.equal(middle.read(), torch.from_numpy(rows[2:5]))
    assert torch.equal(FileRows(path, np.array([1, 2, 4, 5]))[2:].read(), torch.from_numpy(rows[4:]))
    assert FileRows(path, np.array([3, 2])).rows.tolist() == [3, 2]  # not in the file's order: kept as they are
    with pytest.raises(IndexError, match="has 6 rows, not row 6"):
        FileRows(path, np.array([5, 6]))
    with pytest.raises(IndexError, match="has 6 rows, not row 7"):
        FileRows(path, range(2, 8))


def test_reading_rows_from_the_file_keeps_the_process_memory_to_the_batch(tmp_path: Path):
    """A memory mapping would keep every page read in the process's memory: the file's 128 MB here."""
    path = tmp_path / "inputs.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(32768, 1, 64, 64))[:] = 7
    streamed = FileRows(path)
    before = resident_bytes()
    for start in range(0, len(streamed), 256):
        assert int(streamed[torch.arange(start, start + 256)].max()) == 7
        assert streamed[start : start + 256].read().shape == (256, 1, 64, 64)
    assert resident_bytes() - before < 32 * 2**20  # a few batches, and what the allocator keeps of them


def resident_bytes() -> int:
    """This process's resident memory now (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_prefetch_keeps_the_order_fetches_one_ahead_and_raises_where_a_fetch_fails():
    threads = set()

    def fetch(item: int) -> torch.Tensor:
        threads.add(threading.current_thread().name)
        if item == 3:
            raise OSError("unreadable page")
        return torch.tensor(item)

    assert [int(value) for value in prefetched(range(3), fetch, ahead=True)] == [0, 1, 2]
    assert all(name.startswith("deepcluster-prefetch") for name in threads)
    assert list(prefetched([], fetch, ahead=True)) == []
    with pytest.raises(OSError, match="unreadable page"):
        list(prefetched(range(5), fetch, ahead=True))
    assert [int(value) for value in prefetched(range(2), fetch, ahead=False)] == [0, 1]


def test_streamed_epochs_equal_epochs_on_inputs_held_in_memory(tmp_path: Path):
    results = {}
    for budget in (8.0, 0.0):
        config = tiny_config(device_budget_gb=budget)
        layout = RunLayout(tmp_path / str(budget), "loader")
        info = runs.ingest(config, layout)
        runs.sobel_preprocess(layout, info.image_size)
        session = runs.open_session(layout, config, 0, runtime.resolve_device("cpu"))
        losses = [run_epoch(session, epoch, progress=False)["train_loss"] for epoch in (0, 1)]
        results[budget] = (losses, session.previous_assignments, session.model.state_dict())
    (held_losses, held_clusters, held_model), (losses, clusters, model) = results[8.0], results[0.0]
    assert losses == held_losses and np.array_equal(clusters, held_clusters)
    assert all(torch.equal(model[key], held_model[key]) for key in held_model)
