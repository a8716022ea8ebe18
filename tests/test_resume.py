"""A run killed with SIGKILL mid-epoch and resumed ends bit-identical to one left alone (CPU)."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deepcluster import artifacts
from deepcluster.artifacts import RunLayout
from tests.helpers import CLI_ARGS, ROOT, tiny_config

CONFIG = tiny_config(epochs=3)


# The command, but each features and assignments file is followed by a pause of a second on the writer, so
# that a staged file a kill waits for exists for that long on any machine (what is written is unchanged).
SLOW_WRITES = """
import sys, time
from deepcluster import artifacts
for name in ("write_features", "write_assignments"):
    def pausing(*args, _write=getattr(artifacts, name)):
        _write(*args)
        time.sleep(1)
    setattr(artifacts, name, pausing)
from deepcluster.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start_run(runs_dir: Path, run_id: str, slow_writes: bool = False) -> subprocess.Popen:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the session's test server
    program = ["-c", SLOW_WRITES] if slow_writes else ["-m", "deepcluster.cli"]
    command = [sys.executable, *program, "--runs-dir", str(runs_dir), *CLI_ARGS, "--run-id", run_id]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_when(process: subprocess.Popen, path: Path, timeout: float = 180) -> None:
    """SIGKILL `process` once `path` is written after its start (a file left by an earlier killed run does not
    count)."""
    started = time.time_ns()
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_mtime_ns >= started):
        if process.poll() is not None:
            pytest.fail(
                f"the run ended (code {process.returncode}) before {path.name} appeared: {process.stderr.read()}"
            )
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def straight(prefect_harness, tmp_path_factory) -> RunLayout:
    """The run left alone, that every killed and resumed one must equal."""
    from flows.deepcluster_flow import deepcluster_flow

    runs_dir = tmp_path_factory.mktemp("straight")
    deepcluster_flow(config=CONFIG, run_id="straight", runs_dir=str(runs_dir), progress=False)
    return RunLayout(runs_dir, "straight")


# Where the run is killed, in turn, and the epochs finished by then.
KILLS = [
    ("data/inputs.npy", []),  # right after preprocessing, before any epoch
    ("staging/0001/features.parquet", [0]),  # mid-epoch, after PCA
    ("staging/0001/assignments.parquet", [0]),  # mid-epoch, while training
    # The writer commits epoch 1 before it writes anything of epoch 2 (one thread, in order).
    ("staging/0002/features.parquet", [0, 1]),
]


def test_a_run_killed_at_each_stage_and_resumed_equals_an_uninterrupted_one(
    prefect_harness, straight: RunLayout, tmp_path: Path
):
    """The same run killed at each point of KILLS in turn (each time started again, so resuming what the last kill
    left), then resumed to its end."""
    from flows.deepcluster_flow import deepcluster_flow

    layout = RunLayout(tmp_path, "killed")
    for kill_at, finished_before_kill in KILLS:
        process = start_run(tmp_path, "killed", slow_writes=True)
        kill_when(process, layout.root / kill_at)
        assert process.returncode == -signal.SIGKILL
        assert layout.completed_epochs() == finished_before_kill, kill_at  # a half-written epoch does not look finished

    deepcluster_flow(config=CONFIG, run_id="killed", runs_dir=str(tmp_path), progress=False)

    assert layout.completed_epochs() == straight.completed_epochs() == [0, 1, 2]
    assert not list(layout.staging.glob("*"))
    assert artifacts.verify_manifest(layout.data_dir) == []
    for epoch in (1, 2):
        resumed_dir, straight_dir = layout.epoch_dir(epoch), straight.epoch_dir(epoch)
        assert (
            artifacts.read_clusters(resumed_dir / "assignments.parquet")
            == artifacts.read_clusters(straight_dir / "assignments.parquet")
        ).all()
        assert (
            artifacts.read_features(resumed_dir / "features.parquet")
            == artifacts.read_features(straight_dir / "features.parquet")
        ).all()
        assert np.array_equal(
            artifacts.load_array(resumed_dir / artifacts.CENTROIDS),
            artifacts.load_array(straight_dir / artifacts.CENTROIDS),
        )
    resumed_weights = torch.load(layout.epoch_dir(2) / "model.pt", weights_only=True)
    straight_weights = torch.load(straight.epoch_dir(2) / "model.pt", weights_only=True)
    for key, tensor in straight_weights["model"].items():
        assert torch.equal(resumed_weights["model"][key], tensor), key
    for index, state in straight_weights["optimizer"]["state"].items():
        assert torch.equal(resumed_weights["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"])


def test_kills_at_random_moments_then_a_resume_equal_an_uninterrupted_run(
    prefect_harness, straight: RunLayout, tmp_path: Path
):
    """SIGKILL at moments drawn at random (Prefect start-up, ingest, any stage, a commit), several times over
    the same run, then a resume: the same epochs, byte for byte. Bounded in count (4 kills) and time."""
    from flows.deepcluster_flow import deepcluster_flow

    rng = random.Random(7)
    layout = RunLayout(tmp_path, "random")
    deadline = time.monotonic() + 240
    for _ in range(4):
        if time.monotonic() > deadline:
            break
        process = start_run(tmp_path, "random")
        time.sleep(rng.uniform(0.5, 8.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
    deepcluster_flow(config=CONFIG, run_id="random", runs_dir=str(tmp_path), progress=False)
    assert layout.completed_epochs() == straight.completed_epochs() == [0, 1, 2]
    assert all(problems == [] for problems in artifacts.verify_run(layout).values())
    for epoch in (0, 1, 2):
        for name in ("features.parquet", "assignments.parquet", artifacts.CENTROIDS, "model.pt"):
            assert (layout.epoch_dir(epoch) / name).read_bytes() == (straight.epoch_dir(epoch) / name).read_bytes()
