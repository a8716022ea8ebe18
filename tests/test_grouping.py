import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from sklearn.cluster import SpectralClustering

from deepcluster import grouping, loader, metrics
from deepcluster.artifacts import RunLayout
from deepcluster.cli import main
from deepcluster.grouping import group, group_epoch, labels_by_group


def rings(points_per_ring: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Two concentric rings: one class each, not separable by k-means (its clusters are round)."""
    angles = np.random.default_rng(0).uniform(0, 2 * np.pi, 2 * points_per_ring)
    labels = np.repeat([0, 1], points_per_ring)
    radius = np.where(labels == 0, 1.0, 3.0)
    points = np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
    return points + np.random.default_rng(1).normal(scale=0.05, size=points.shape), labels


def test_spectral_follows_neighbourhoods_where_kmeans_cannot():
    points, labels = rings()
    assert metrics.nmi(labels, group(points, 2, "spectral")) == pytest.approx(1.0)
    assert metrics.nmi(labels, group(points, 2, "snn")) == pytest.approx(1.0)
    assert metrics.nmi(labels, group(points, 2, "snn-kmeans")) == pytest.approx(1.0)
    assert metrics.nmi(labels, group(points, 2, "snn-sized")) == pytest.approx(1.0)
    assert metrics.nmi(labels, group(points, 2, "leiden")) == pytest.approx(1.0)
    assert metrics.nmi(labels, group(points, 2, "kmeans")) < 0.1


def test_snn_sized_gives_a_small_cut_off_set_of_points_no_group_of_its_own():
    # two classes of 400 points, the first with a rare kind of 20 far from both: snn-kmeans gives those 20 one of
    # the two groups; snn-sized sets them aside, groups the rest, and puts them with the nearer class (all but at most
    # two points with their class: an outlier whose neighbours share none of its own may go either way)
    rng = np.random.default_rng(4)
    parts = [rng.normal((0, 0), 1.0, (400, 2)), rng.normal((8, 0), 1.0, (400, 2)), rng.normal((0, 10), 0.3, (20, 2))]
    points, labels = np.concatenate(parts), np.repeat([0, 1, 0], [400, 400, 20])
    assert sorted(np.bincount(group(points, 2, "snn-kmeans"))) == [20, 800]
    sized = group(points, 2, "snn-sized")
    assert metrics.accuracy(labels, sized) >= 1 - 2 / len(points)
    assert set(sized[-20:].tolist()) == {np.bincount(sized[:400]).argmax()}  # the rare kind with its class
    # a group of at least a tenth of an even share stands: snn-sized is snn-kmeans there
    points, _ = rings()
    assert np.array_equal(group(points, 2, "snn-sized"), group(points, 2, "snn-kmeans"))


def cliques(sizes: list[int], links: dict[tuple[int, int], int]) -> tuple[sparse.csr_matrix, np.ndarray]:
    """A graph of cliques of the given sizes, clique a joined to clique b by links[a, b] edges; the cliques' ids."""
    ids = np.repeat(np.arange(len(sizes)), sizes)
    graph = (ids[:, None] == ids[None]).astype(float)
    starts = np.cumsum([0, *sizes])
    for (a, b), count in links.items():
        for n in range(count):
            graph[starts[a] + n, starts[b] + n] = graph[starts[b] + n, starts[a] + n] = 1.0
    np.fill_diagonal(graph, 0)
    return sparse.csr_matrix(graph), ids


def test_leiden_merges_the_communities_most_joined_down_to_k():
    # four communities, 0 and 1 joined by many edges, 2 and 3 too, 1 and 2 by one: two groups, {0, 1} and {2, 3}
    graph, ids = cliques([30, 10, 20, 20], {(0, 1): 8, (2, 3): 8, (1, 2): 1})
    for k, expected in ((4, ids), (2, ids // 2)):
        found = grouping.modularity_groups(graph, k)
        assert metrics.nmi(expected, found) == pytest.approx(1.0)
    assert grouping.modularity_groups(graph, 3).max() == 2  # exactly k, whatever the resolution gives
    assert np.array_equal(grouping._merged(graph, ids, 2), ids // 2)  # the merging alone
    # more groups than the graph has communities: a resolution high enough to split them
    assert len(np.unique(grouping.modularity_groups(graph, 7))) == 7
    with pytest.raises(ValueError, match="graph of 80 points into 81 groups"):
        grouping.modularity_groups(graph, 81)


def test_snn_weighs_each_edge_by_the_neighbours_its_ends_share():
    points = np.random.default_rng(2).normal(size=(60, 5))
    graph = grouping.shared_neighbour_graph(points, 4).toarray()
    distances = ((points[:, None] - points[None]) ** 2).sum(-1) + np.diag(np.full(60, np.inf))
    nearest = [set(np.argsort(row)[:4].tolist()) for row in distances]
    bridges = 0
    for i in range(60):
        for j in range(60):
            directions = (j in nearest[i]) + (i in nearest[j])  # 2 between mutual neighbours, 0 off the graph
            shared = len(nearest[i] & nearest[j])
            assert graph[i, j] == pytest.approx(0.5 * directions * shared)
            bridges += directions > 0 and shared == 0
    assert bridges > 0  # the case that matters is there: neighbours that share nobody, joined by an edge of 0


@pytest.mark.parametrize("method", grouping.GROUPING_METHODS)
def test_groupings_are_deterministic_and_in_range(method):
    points, _ = rings(50)
    first = group(points, 3, method)
    assert np.array_equal(first, group(points, 3, method))
    assert first.dtype == np.int64 and set(first.tolist()) == {0, 1, 2}
    assert group(points[:2], 2, method).tolist() == [0, 1]  # as many groups as points: one each


def test_grouping_by_each_method_builds_the_shared_graph_and_its_embedding_once(monkeypatch):
    points, _ = rings(50)
    alone = {method: group(points, 3, method) for method in grouping.GROUPING_METHODS}
    built: list[int] = []
    build = grouping.shared_neighbour_graph
    monkeypatch.setattr(grouping, "shared_neighbour_graph", lambda *args: built.append(args[1]) or build(*args))
    embedded: list[int] = []
    embed = grouping.spectral_embedding
    monkeypatch.setattr(grouping, "spectral_embedding", lambda *args, **kw: embedded.append(1) or embed(*args, **kw))
    together = grouping.group_by_each(points, 3, grouping.GROUPING_METHODS)
    assert all(np.array_equal(together[method], alone[method]) for method in grouping.GROUPING_METHODS)
    assert built == [grouping.GRAPH_NEIGHBOURS["snn"]]  # one graph for snn, snn-kmeans and leiden
    assert embedded == [1]  # one embedding for snn and snn-kmeans


@pytest.mark.parametrize(("method", "assign_labels"), [("snn", "cluster_qr"), ("snn-kmeans", "kmeans")])
def test_snn_groups_are_scikit_learns_spectral_clustering_of_the_graph(method, assign_labels):
    # blobs that overlap, in more dimensions than groups: where the ways of dividing the embedding differ
    rng = np.random.default_rng(3)
    points = np.concatenate([rng.normal(loc, 1.0, size=(150, 8)) for loc in (0.0, 1.5, 3.0, 4.5)])
    graph = grouping.shared_neighbour_graph(points, grouping.GRAPH_NEIGHBOURS[method])
    spectral = SpectralClustering(
        4, affinity="precomputed", assign_labels=assign_labels, n_init=grouping.KMEANS_INITS, random_state=0
    )
    assert np.array_equal(group(points, 4, method), spectral.fit_predict(graph))


def test_bad_groupings_are_refused():
    points, _ = rings(5)
    with pytest.raises(ValueError, match="into 11 groups"):
        group(points, 11, "kmeans")
    with pytest.raises(ValueError, match="unknown grouping method 'louvain'"):
        group(points, 2, "louvain")  # type: ignore[arg-type]


def test_group_command_writes_the_groups_of_an_epoch(finished_run: Path, tmp_path: Path, capsys, monkeypatch):
    shutil.copytree(finished_run / "tiny", tmp_path / "tiny")
    assert main(["--runs-dir", str(tmp_path), "group", "tiny", "--groups", "3", "--method", "spectral"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "tiny" / "groups" / "epoch0001-3-spectral.parquet"
    assert f"written to {path}" in out and "NMI against the labels" in out and "the labels in each group:" in out
    table = pd.read_parquet(path)
    assert list(table.columns) == ["index", "group", "label"] and len(table) == 300
    assert set(table["group"]) == {0, 1, 2}
    labels = np.load(tmp_path / "tiny" / "data" / "labels.npy")
    assert np.array_equal(table["label"].to_numpy(), labels)
    # the same epoch grouped again gives the same groups (the grouping is deterministic), and so it does with the
    # inputs read from their file a batch at a time, as for inputs over the run's device_budget_gb
    epoch, groups = group_epoch(RunLayout(tmp_path, "tiny"), 1, 3, "spectral", "cpu")
    assert epoch == 1 and np.array_equal(groups, table["group"].to_numpy())
    opened: list[object] = []
    monkeypatch.setattr(
        grouping, "open_inputs", lambda *args: opened.append(loader.open_inputs(*args[:2], 0.0)) or opened[-1]
    )
    _, streamed = group_epoch(RunLayout(tmp_path, "tiny"), 1, 3, "spectral", "cpu")
    assert isinstance(opened[0], loader.FileRows) and np.array_equal(streamed, groups)


def test_labels_by_group_reads_a_grouping_against_labels():
    groups = np.array([2, 2, 2, 2, 0, 0, 0, 0, 0, 1])
    labels = np.array([3, 3, 1, 0, 1, 1, 1, 0, 2, 3])
    assert labels_by_group(groups, labels) == [
        "group 0 (5 images): label 1 3 (60.0%), label 0 1 (20.0%), label 2 1 (20.0%)",
        "group 2 (4 images): label 3 2 (50.0%), label 0 1 (25.0%), label 1 1 (25.0%)",
        "group 1 (1 images): label 3 1 (100.0%)",
    ]
    assert labels_by_group(groups, labels, shown=1)[:2] == [
        "group 0 (5 images): label 1 3 (60.0%), other labels 2 (40.0%)",
        "group 2 (4 images): label 3 2 (50.0%), other labels 2 (50.0%)",
    ]


def test_group_command_refuses_bad_requests_before_writing(finished_run: Path, capsys):
    assert main(["--runs-dir", str(finished_run), "group", "tiny", "--groups", "1"]) == 2
    assert "groups must be between 2 and the run's 300 images, got 1" in capsys.readouterr().err
    assert main(["--runs-dir", str(finished_run), "group", "tiny", "--groups", "3", "--epoch", "5"]) == 2
    assert "epoch 5 of run 'tiny' is not finished" in capsys.readouterr().err
    assert not (finished_run / "tiny" / "groups").exists()
