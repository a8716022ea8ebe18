"""Runs: creating one, refusing bad input and changed configs or data, continuing one, checkpoints."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepcluster import runs, runtime
from deepcluster.artifacts import RunLayout
from deepcluster.data import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC
from deepcluster.epoch import run_epoch
from deepcluster.errors import ConfigError, RunError
from tests.helpers import tiny_config, write_idx


def test_bad_input_is_refused_before_anything_is_written(tmp_path: Path):
    layout = RunLayout(tmp_path, "bad")
    for config, message in [
        (tiny_config(num_clusters=301), "k=301 is larger than the number of images"),
        (tiny_config(num_clusters=5, limit=8), r"neighbours=10 must be below the number of images \(8\): set"),
        (tiny_config(head="linear", pca_dim=512), "pca_dim=512"),
        (tiny_config(arch="alexnet", image_size=32), "alexnet needs images of at least 63"),
        (tiny_config(small_crops=2, small_crop_side=0.25), "small crops of 0.25 of 28 pixels are 7 pixels"),
    ]:
        with pytest.raises(ConfigError, match=message):
            runs.ingest(config, layout)
    with pytest.raises(FileNotFoundError, match="missing"):
        runs.ingest(tiny_config(dataset="fashion-mnist", data_dir=tmp_path / "missing"), layout)
    assert not layout.root.exists()


def test_existing_run_refuses_a_changed_config_naming_the_keys(tmp_path: Path):
    layout = RunLayout(tmp_path, "r")
    runs.ingest(tiny_config(), layout)
    with pytest.raises(RunError, match=r"different config \(num_clusters: 10 -> 12, seed: 7 -> 8\)"):
        runs.ingest(tiny_config(num_clusters=12, seed=8), layout)
    runs.ingest(tiny_config(epochs=5), layout)  # more epochs extend the run


def test_a_run_continues_from_where_its_data_now_lies(tmp_path: Path):
    rng = np.random.default_rng(0)
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    write_idx(old / "train-images-idx3-ubyte", rng.integers(0, 255, (40, 28, 28), dtype=np.uint8), IDX_IMAGES_MAGIC)
    write_idx(old / "train-labels-idx1-ubyte", np.arange(40, dtype=np.uint8) % 4, IDX_LABELS_MAGIC)
    layout = RunLayout(tmp_path / "runs", "moved")
    runs.ingest(tiny_config(dataset="fashion-mnist", data_dir=old, limit=None, num_clusters=4), layout)
    shutil.move(old, new)
    runs.ingest(tiny_config(dataset="fashion-mnist", data_dir=new, limit=None, num_clusters=4), layout)
    assert json.loads(layout.run_json.read_text())["config"]["data_dir"] == str(new)


def test_existing_run_refuses_changed_data(tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):
        Image.fromarray(np.full((10, 10), i * 20, np.uint8)).save(images / f"{i}.png")
    config = tiny_config(dataset=str(images), limit=None, num_clusters=3)
    layout = RunLayout(tmp_path / "runs", "folder")
    runs.ingest(config, layout)
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(images / "0.png")
    with pytest.raises(RunError, match="was trained on different data"):
        runs.ingest(config, layout)


def test_checkpoint_is_a_snapshot_that_later_training_does_not_change(tmp_path: Path):
    layout = RunLayout(tmp_path, "snap")
    config = tiny_config()
    info = runs.ingest(config, layout)
    runs.sobel_preprocess(layout, info.image_size)
    session = runs.open_session(layout, config, 0, runtime.resolve_device("cpu"))
    run_epoch(session, 0, progress=False)
    state = runs.checkpoint(session, 0)
    frozen = {key: value.clone() for key, value in state["model"].items()}
    run_epoch(session, 1, progress=False)
    assert all(torch.equal(frozen[key], state["model"][key]) for key in frozen)
    assert not all(torch.equal(frozen[key], value) for key, value in session.model.state_dict().items())
