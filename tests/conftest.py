"""Shared fixtures: one Prefect test server for the whole session, tiny configs and runs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepcluster.config import Config

# The runs of the tests take turns on the device among themselves, not with runs outside the tests.
os.environ["DEEPCLUSTER_LOCKS_DIR"] = tempfile.mkdtemp(prefix="deepcluster-test-locks-")


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect server and database, entered once per test session (it takes ~15 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


def tiny_config(**overrides: object) -> Config:
    """300 sample images, 10 clusters, one pass over them an epoch, otherwise the defaults: an epoch takes about a
    second on CPU."""
    values: dict[str, object] = {
        "dataset": "fashion-mnist-sample",
        "limit": 300,
        "epochs": 2,
        "num_clusters": 10,
        "min_epoch_samples": 0,  # one pass over the 300 images an epoch
        "batch_size": 64,
        "device": "cpu",
        "seed": 7,
    }
    values.update(overrides)
    return Config.model_validate(values)


@pytest.fixture(scope="session")
def finished_run(prefect_harness, tmp_path_factory) -> Path:
    """A 2-epoch flow run on 300 sample images; returns its runs directory (run id 'tiny')."""
    from flows.deepcluster_flow import deepcluster_flow

    runs_dir = tmp_path_factory.mktemp("runs")
    deepcluster_flow(config=tiny_config(), run_id="tiny", runs_dir=str(runs_dir), progress=False)
    return runs_dir


def write_images(folder: Path, size: int, mode: str, count: int = 4) -> None:
    """`count` random PNG images of size x size, mode "L" or "RGB", in a new folder (no labels)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        shape = (size, size, 3) if mode == "RGB" else (size, size)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"image{index}.png")


def training_span(runs_dir: Path, run_id: str) -> tuple[int, int]:
    """When a finished run's flow run held its device: from its record (run.json) to its report, in ns."""
    root = runs_dir / run_id
    return (root / "run.json").stat().st_mtime_ns, (root / "report" / "index.html").stat().st_mtime_ns
