"""The epoch loop of the library: its stages, several heads, k-means seeded from the last epoch."""

from pathlib import Path

import pytest
import torch

from deepcluster import runs, runtime, stages
from deepcluster.artifacts import RunLayout
from deepcluster.epoch import run_epoch
from deepcluster.kmeans import centroid_means, kmeans
from deepcluster.rng import stage_generator
from tests.helpers import tiny_config


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


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_heads": 2, "intensity": True, "assignment": "balanced"},
        {
            "extra_clusters": (4, 20),
            "neighbours": 5,
            "neighbour_features": "representation",
            "views": 2,
            "small_crops": 2,
            "instance_weight": 0.5,
            "min_epoch_samples": 500,
        },
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
    features, _ = stages.reduce(stages.extract(session)[0], config.pca_dim)
    clusterings = stages.cluster(features, config, 2)
    assert [len(clustering.centroids) for clustering in clusterings] == stages.head_clusters(config)
    if config.num_heads > 1:  # each head draws its own k-means seeds
        assert not torch.equal(clusterings[0].assignments, clusterings[1].assignments)
    if config.assignment == "balanced":  # 30 images a cluster, but for the argmax of equal shares
        assert all(torch.bincount(each.assignments).max() <= 40 for each in clusterings)
    targets = stages.training_targets(features, clusterings, config)
    # soft (neighbours, the default): each cluster's share among an image and its neighbours
    assert [tuple(target.shape) for target in targets] == [(300, k) for k in stages.head_clusters(config)]
    assert all(torch.allclose(target.sum(dim=1), torch.ones(300)) for target in targets)
    sample = stages.resample(clusterings[0].assignments, config, 2)
    assert len(sample) == max(300, config.min_epoch_samples)


@pytest.mark.parametrize(
    ("minimum", "maximum", "drawn"), [(0, None, 300), (500, None, 500), (500, 100, 100), (0, 400, 300)]
)
def test_an_epoch_draws_the_datasets_size_within_its_bounds(minimum: int, maximum: int | None, drawn: int):
    config = tiny_config(min_epoch_samples=minimum, max_epoch_samples=maximum)
    assignments = torch.arange(300) % config.num_clusters
    sample = stages.resample(assignments, config, 0)
    assert len(sample) == drawn and set(sample.tolist()) <= set(range(300))


def test_previous_init_starts_k_means_from_last_epochs_clusters():
    config = tiny_config(kmeans_init="previous")
    inputs, labels = runs.load_inputs(config)
    session = runs.new_session(config, inputs, labels, torch.device("cpu"))
    run_epoch(session, 0, progress=False)
    previous = session.previous_assignments
    assert previous is not None
    features, _ = stages.reduce(stages.extract(session)[0], config.pca_dim)
    start = centroid_means(features, torch.from_numpy(previous), config.num_clusters)
    expected = kmeans(features, config.num_clusters, stage_generator(config.seed, 1, "kmeans"), 20, start)
    assert torch.equal(stages.cluster(features, config, 1, previous)[0].assignments, expected.assignments)
    first_epoch = stages.cluster(features, config, 0)[0]  # no previous epoch: k-means++ from the epoch's seed
    plus_plus = kmeans(features, config.num_clusters, stage_generator(config.seed, 0, "kmeans"), 20, "k-means++")
    assert torch.equal(first_epoch.assignments, plus_plus.assignments)
