"""Runs trained by several processes (torchrun, gloo on the CPU): the run's files are those of a single process,
a rank that dies fails the run with a clear message, and the run then continues on any number of ranks."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from deepcluster import artifacts, runs
from deepcluster.artifacts import RunLayout
from deepcluster.config import Config
from deepcluster.epoch import run_epoch
from deepcluster.errors import RunError
from deepcluster.ranks import join, train_on_ranks
from tests.helpers import free_port, tiny_config


def _start(layout: RunLayout, config: Config) -> None:
    info = runs.ingest(config, layout)
    runs.sobel_preprocess(layout, info.image_size)
    layout.discard_partial_epochs()
    artifacts.check_run(layout)


def test_two_ranks_train_a_run_that_one_process_continues(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path, "ranked")
    config = tiny_config(epochs=2, nproc_per_node=2, sync_batch_norm=True)
    _start(layout, config)
    seen: list[dict[str, Any]] = []
    train_on_ranks(layout, config, seen.append)
    assert [metrics["epoch"] for metrics in seen] == [0, 1] == layout.completed_epochs()
    artifacts.check_run(layout)
    assert len(artifacts.read_clusters(layout.assignments(1))) == 300
    assert artifacts.read_features(layout.features(1)).shape[0] == 300
    assert seen[1]["num_images"] == 300 and seen[1]["nmi_previous"] is not None

    alone = tiny_config(epochs=3)  # the same run goes on in one process
    _start(layout, alone)
    record = artifacts.read_run_record(layout)
    assert record["config"]["nproc_per_node"] == 1
    assert {"from_epoch": 2, "key": "nproc_per_node", "from": 2, "to": 1} in record["changes"]
    session = runs.open_session(layout, alone, 2, torch.device("cpu"))
    metrics = run_epoch(session, 2)
    assert metrics["num_images"] == 300


def _rank_pids(run_dir: Path, rank: int) -> list[int]:
    """The processes of rank `rank` training the run in `run_dir` (torchrun's workers), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environment = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if (
            b"deepcluster.ranks" in command
            and str(run_dir).encode() in command
            and f"RANK={rank}".encode() in environment
        ):
            found.append(int(entry.name))
    return found


def test_a_rank_that_dies_fails_the_run_which_then_continues(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path, "killed")
    config = tiny_config(epochs=5, nproc_per_node=2)  # rank 1 is killed once epoch 0 is committed
    _start(layout, config)

    def kill_rank_one(metrics: dict[str, Any]) -> None:
        if metrics["epoch"] == 0:
            for pid in _rank_pids(layout.root.resolve(), 1):
                os.kill(pid, signal.SIGKILL)

    with pytest.raises(RunError, match=r"the 2 ranks training run 'killed' failed .*running it again continues it"):
        train_on_ranks(layout, config, kill_rank_one)
    done = layout.completed_epochs()
    assert done[:1] == [0] and len(done) < 5
    _start(layout, config)  # discards a half-written epoch, checks what is committed
    seen: list[dict[str, Any]] = []
    train_on_ranks(layout, config, seen.append)
    assert [metrics["epoch"] for metrics in seen] == list(range(len(done), 5))
    assert layout.completed_epochs() == [0, 1, 2, 3, 4]
    artifacts.check_run(layout)


def test_two_machines_train_a_run_together(tmp_path: Path) -> None:
    """Both machines are this one here, meeting on the loopback address as two machines meet on a network."""
    layout = RunLayout(tmp_path, "nodes")
    config = tiny_config(epochs=1, nnodes=2, master_port=free_port())
    _start(layout, config)
    with pytest.raises(RunError, match=r"node rank 2 is not one of 1..1"):
        join(layout, 2)
    codes: list[int] = []
    other = threading.Thread(target=lambda: codes.append(join(layout, 1)))
    other.start()
    seen: list[dict[str, Any]] = []
    train_on_ranks(layout, config, seen.append)
    other.join(timeout=120)
    assert codes == [0] and [metrics["epoch"] for metrics in seen] == [0]
    artifacts.check_run(layout)


def test_join_refuses_a_run_of_one_machine(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path, "single")
    _start(layout, tiny_config())
    with pytest.raises(RunError, match=r"trains on one machine \(nnodes=1\)"):
        join(layout, 1)
