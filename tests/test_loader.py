"""Inputs held on the device or read from their memory-mapped file a batch at a time: the same results."""

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from deepcluster import artifacts, runs, runtime
from deepcluster.artifacts import RunLayout
from deepcluster.epoch import run_epoch
from deepcluster.loader import place_inputs, prefetched
from tests.helpers import tiny_config


def test_inputs_over_the_budget_stay_memory_mapped(tmp_path: Path):
    path = tmp_path / "inputs.npy"
    np.save(path, np.arange(2 * 16, dtype=np.uint8).reshape(2, 1, 4, 4))
    mapped = artifacts.map_array(path)
    held = place_inputs(mapped, torch.device("cpu"), budget_gb=1.0)
    streamed = place_inputs(mapped, torch.device("cpu"), budget_gb=0.0)
    assert torch.equal(held, streamed)
    assert held.untyped_storage().data_ptr() != mapped.ctypes.data  # read into memory
    assert streamed.untyped_storage().data_ptr() == mapped.ctypes.data  # the file's pages themselves
    assert np.array_equal(np.load(path), mapped)  # never written back


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
