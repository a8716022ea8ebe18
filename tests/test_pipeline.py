"""The stage functions over a run directory (no Prefect)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepcluster import runs, runtime, stages
from deepcluster.artifacts import RunLayout
from deepcluster.data import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC
from deepcluster.epoch import run_epoch
from deepcluster.errors import ConfigError, RunError
from deepcluster.kmeans import centroid_means, kmeans
from deepcluster.rng import stage_generator
from tests.helpers import tiny_config, write_idx


def test_bad_input_is_refused_before_anything_is_written(tmp_path: Path):
    layout = RunLayout(tmp_path, "bad")
    for config, message in [
        (tiny_config(num_clusters=301), "k=301 is larger than the number of images"),
        (tiny_config(head="linear", pca_dim=512), "pca_dim=512"),
        (tiny_config(arch="alexnet", image_size=32), "alexnet needs images of at least 63"),
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


def test_one_epoch_of_the_library_loop(tmp_path: Path):
    layout = RunLayout(tmp_path, "stages")
    config = tiny_config()
    info = runs.ingest(config, layout)
    assert (info.num_images, info.image_size, info.has_labels) == (300, 28, True)
    runs.sobel_preprocess(layout, info.image_size)
    session = runs.open_session(layout, config, 0, runtime.resolve_device("cpu"))
    assert session.inputs.dtype == torch.uint8 and session.inputs.shape == (300, 1, 28, 28)
    metrics = run_epoch(session, 0, progress=False)
    assert metrics["train_loss"] > 0 and metrics["kmeans_loss"] > 0 and 1 <= metrics["kmeans_iterations"] <= 20
    assert metrics["nmi_previous"] is None and 0 <= metrics["labels"]["nmi"] <= 1
    assert metrics["cluster_sizes"]["empty"] == 0
    assert set(metrics["stage_seconds"]) == {
        "extract",
        "pca",
        "kmeans",
        "targets",
        "resample",
        "train",
        "evaluate",
        "epoch",
    }
    first = session.previous_assignments
    assert first is not None and first.shape == (300,)
    assert 0 <= run_epoch(session, 1, progress=False)["nmi_previous"] <= 1


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


@pytest.mark.parametrize(("precision", "expected"), [("fp32", False), ("bf16", True)])
def test_precision_is_as_configured(precision: str, expected: bool):
    assert runtime.use_bf16(tiny_config(precision=precision), torch.device("cpu")) is expected


def test_cuda_requested_without_gpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        runtime.resolve_device("cuda")
    assert str(runtime.resolve_device("auto")) == "cpu"


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_heads": 2},
        {"extra_clusters": (4, 20), "neighbours": 5, "views": 2, "instance_weight": 0.5, "min_epoch_samples": 500},
        {"head": "linear", "pca_dim": 32, "num_heads": 2, "kmeans_init": "random"},
        {"head": "linear", "pca_dim": 32, "kmeans_backend": "faiss", "kmeans_init": "k-means++"},
    ],
)
def test_epochs_with_several_heads_and_the_paper_head(overrides: dict[str, object]):
    if overrides.get("kmeans_backend") == "faiss":
        pytest.importorskip("faiss", reason="faiss is an optional backend (pip install faiss-cpu)")
    config = tiny_config(**overrides)
    inputs, labels = runs.load_inputs(config)
    session = runs.new_session(config, inputs, labels, torch.device("cpu"))
    for epoch in range(2):
        metrics = run_epoch(session, epoch, progress=False)
        assert metrics["train_loss"] > 0 and metrics["cluster_sizes"]["empty"] == 0
    features, _ = stages.reduce(stages.extract(session), config.pca_dim)
    clusterings = stages.cluster(features, config, 2)
    assert [len(clustering.centroids) for clustering in clusterings] == stages.head_clusters(config)
    if config.num_heads > 1:  # each head draws its own k-means seeds
        assert not torch.equal(clusterings[0].assignments, clusterings[1].assignments)
    targets = stages.training_targets(features, clusterings, config)
    if config.neighbours:  # soft: each cluster's share among an image and its neighbours
        assert [tuple(target.shape) for target in targets] == [(300, 10), (300, 4), (300, 20)]
        assert torch.allclose(targets[1].sum(dim=1), torch.ones(300))
    sample = stages.resample(clusterings[0].assignments, config, 2)
    assert len(sample) == max(300, config.min_epoch_samples)


def test_previous_init_starts_k_means_from_last_epochs_clusters():
    config = tiny_config(kmeans_init="previous")
    inputs, labels = runs.load_inputs(config)
    session = runs.new_session(config, inputs, labels, torch.device("cpu"))
    run_epoch(session, 0, progress=False)
    previous = session.previous_assignments
    assert previous is not None
    features, _ = stages.reduce(stages.extract(session), config.pca_dim)
    start = centroid_means(features, torch.from_numpy(previous), config.num_clusters)
    expected = kmeans(features, config.num_clusters, stage_generator(config.seed, 1, "kmeans"), 20, start)
    assert torch.equal(stages.cluster(features, config, 1, previous)[0].assignments, expected.assignments)
    first_epoch = stages.cluster(features, config, 0)[0]  # no previous epoch: k-means++ from the epoch's seed
    plus_plus = kmeans(features, config.num_clusters, stage_generator(config.seed, 0, "kmeans"), 20, "k-means++")
    assert torch.equal(first_epoch.assignments, plus_plus.assignments)
