"""The final grouping: a run's features (or any points) into the k groups a user asks for.

A run trains on an over-clustering (k = 30 by default); a user wants k groups. Six ways:
- `kmeans`: k-means at k, the best of several k-means++ starts (spherical on L2-normalised features);
- `spectral`: spectral clustering of the symmetric 10-nearest-neighbour graph of the points (Shi & Malik
  2000; Ng, Jordan & Weiss 2002), which follows the neighbourhoods instead of assuming round clusters of
  similar size: learned features keep classes locally (their nearest neighbours share a class) long
  before a class is one round blob;
- `snn`: spectral clustering of such a graph over 20 neighbours with each edge's weight multiplied by
  the number of nearest neighbours its two ends share (Jarvis & Patrick 1973). An edge between two points whose
  neighbourhoods do not overlap, the kind that bridges two groups, weighs nothing, so a class's outlying mode stays
  with its class instead of joining the group it touches; the larger graph keeps the modes of one class joined where
  10 neighbours left one mode a group of its own (measured: docs/RESULTS.md);
- `snn-kmeans`: `snn`'s spectral embedding (its graph's first k eigenvectors) divided into k groups by
  k-means (the best of several starts) instead of by `snn`'s column-pivoted QR of the embedding (Damle, Minden & Ying
  2019): nearly the same groups where `snn`'s are good, far better where they were worst (measured:
  docs/RESULTS.md);
- `snn-sized` (the default): `snn-kmeans`, where a group of fewer than MIN_GROUP_SHARE of an even share of the
  points (N / k) does not count as one: its points are set aside, the rest grouped again, and each point set aside
  joins the group most of its nearest kept points are in. Spectral clustering gives a small set of points that is
  nearly cut off from the rest (a class's rare kind, e.g. a hundred sandals of one style among thousands of shoes) a
  group of its own, and the k groups then have one too few for the large parts (measured: docs/RESULTS.md); where
  classes are that rare, use another method;
- `leiden`: the communities of that same weighted graph, found by the Leiden algorithm (Traag, Waltman & van Eck
  2019) maximising modularity at the lowest resolution that gives k or more of them, then (where no resolution gives
  exactly k) merged two at a time, the most joined first, down to k. Modularity weighs each group's inner edges
  against what the group's volume alone would give, with no preference for parts of equal volume, which the
  normalised cut of spectral clustering has.
All are deterministic for given points (fixed seeds); none looks at labels.
"""

from __future__ import annotations

import copy
import random
import warnings
from collections.abc import Callable, Sequence
from typing import get_args

import igraph
import numpy as np
from scipy import linalg, sparse
from sklearn.cluster import KMeans, SpectralClustering
from sklearn.manifold import spectral_embedding
from sklearn.neighbors import NearestNeighbors

from deepcluster import artifacts, metrics, run_metrics, runs, runtime
from deepcluster.artifacts import RunLayout
from deepcluster.config import GroupingMethod, recorded_config
from deepcluster.errors import ConfigError
from deepcluster.features import representation_features
from deepcluster.loader import open_inputs
from deepcluster.selflabel import self_label

GROUPING_METHODS: tuple[GroupingMethod, ...] = get_args(GroupingMethod)
KMEANS_INITS = 10
# each point's neighbours in the graph
GRAPH_NEIGHBOURS: dict[GroupingMethod, int] = {
    "spectral": 10,
    "snn": 20,
    "snn-kmeans": 20,
    "snn-sized": 20,
    "leiden": 20,
}
MIN_GROUP_SHARE = 0.1  # `snn-sized`: the smallest group, as a share of an even split of the points
SIZED_ROUNDS = 5  # `snn-sized`: at most this many groupings of what is left before the groups stand as they are
RESOLUTION_STEPS = 20  # bisections of `leiden`'s resolution towards exactly k communities
GROUPING_SEED = 0  # fixed: a grouping never depends on the run's seed, only on the points


def group(points: np.ndarray, num_groups: int, method: GroupingMethod) -> np.ndarray:
    """Group points (N, D) into `num_groups`; returns int64 (N,) group ids in [0, num_groups)."""
    return group_by_each(points, num_groups, (method,))[method]


def group_by_each(
    points: np.ndarray, num_groups: int, methods: Sequence[GroupingMethod]
) -> dict[GroupingMethod, np.ndarray]:
    """`group` by each of `methods`, by method; the shared-neighbour graph that `snn`, `snn-kmeans` and `leiden` all
    group is built once, and its spectral embedding, which `snn` and `snn-kmeans` divide, computed once."""
    if not 2 <= num_groups <= len(points):
        raise ValueError(f"cannot group {len(points)} points into {num_groups} groups (need 2 <= groups <= points)")
    unknown = [method for method in methods if method not in GROUPING_METHODS]
    if unknown:
        raise ValueError(f"unknown grouping method {unknown[0]!r}: expected one of {', '.join(GROUPING_METHODS)}")
    if num_groups == len(points):  # a group each (the graph methods need more points than groups)
        return {method: np.arange(num_groups, dtype=np.int64) for method in methods}
    graphs: dict[int, sparse.csr_matrix] = {}
    embeddings: dict[int, Embedding] = {}

    def graph(method: GroupingMethod) -> sparse.csr_matrix:
        neighbours = graph_neighbours(method, len(points))
        if neighbours not in graphs:
            graphs[neighbours] = shared_neighbour_graph(points, neighbours)
        return graphs[neighbours]

    def embedding(method: GroupingMethod) -> Embedding:
        neighbours = graph_neighbours(method, len(points))
        if neighbours not in embeddings:
            embeddings[neighbours] = Embedding.of(graph(method), num_groups)
        return embeddings[neighbours]

    return {method: _grouped(points, num_groups, method, graph, embedding) for method in methods}


def graph_neighbours(method: GroupingMethod, count: int) -> int:
    """Each point's neighbours in `method`'s graph of `count` points: GRAPH_NEIGHBOURS, fewer where the points are
    fewer."""
    return min(GRAPH_NEIGHBOURS[method], count - 1)


def _grouped(
    points: np.ndarray,
    num_groups: int,
    method: GroupingMethod,
    graph: Callable[[GroupingMethod], sparse.csr_matrix],
    embedding: Callable[[GroupingMethod], Embedding],
) -> np.ndarray:
    """One method's groups; `graph` gives a method's shared-neighbour graph of the points, `embedding` its spectral
    embedding."""
    if method == "kmeans":
        model = KMeans(num_groups, n_init=KMEANS_INITS, random_state=GROUPING_SEED)
        return model.fit_predict(points).astype(np.int64)
    if method == "spectral":
        spectral = SpectralClustering(
            num_groups,
            affinity="nearest_neighbors",
            n_neighbors=graph_neighbours(method, len(points)),
            assign_labels="cluster_qr",
            random_state=GROUPING_SEED,
        )
        return spectral.fit_predict(points).astype(np.int64)
    if method == "snn":
        return embedding(method).pivoted_qr_groups()
    if method == "snn-kmeans":
        return embedding(method).kmeans_groups()
    if method == "snn-sized":
        return sized_groups(points, num_groups, embedding(method).kmeans_groups())
    return modularity_groups(graph("leiden"), num_groups)


class Embedding:
    """A graph's spectral embedding: each point's entries in the first k eigenvectors of the graph's normalised
    Laplacian (Ng, Jordan & Weiss 2002), and two ways to divide it into k groups. Its groups equal those of
    scikit-learn's SpectralClustering of the graph (affinity "precomputed", random_state GROUPING_SEED) with the
    same way of assigning labels: one random state seeds the eigensolver and then k-means."""

    def __init__(self, vectors: np.ndarray, random_state: np.random.RandomState) -> None:
        self.vectors = vectors  # (N, k)
        self.random_state = random_state  # as the eigensolver left it, once it had drawn its start
        self._kmeans: np.ndarray | None = None  # `kmeans_groups`, once computed (`snn-kmeans` and `snn-sized` share it)

    @classmethod
    def of(cls, graph: sparse.csr_matrix, num_groups: int) -> Embedding:
        random_state = np.random.RandomState(GROUPING_SEED)
        with warnings.catch_warnings():  # a graph in several pieces is expected here: each piece its own eigenvector
            warnings.filterwarnings("ignore", "Graph is not fully connected")
            vectors = spectral_embedding(graph, n_components=num_groups, random_state=random_state, drop_first=False)
        return cls(vectors, random_state)

    def kmeans_groups(self) -> np.ndarray:
        """`snn-kmeans`: k-means of the embedding, the best of KMEANS_INITS starts (computed once; a copy each call)."""
        if self._kmeans is None:
            random_state = copy.deepcopy(self.random_state)  # starts where the eigensolver left off
            model = KMeans(self.vectors.shape[1], n_init=KMEANS_INITS, random_state=random_state)
            self._kmeans = model.fit_predict(self.vectors).astype(np.int64)
        return self._kmeans.copy()

    def pivoted_qr_groups(self) -> np.ndarray:
        """`snn`: Damle, Minden & Ying's direct assignment. A QR factorisation of the embedding's transpose with
        column pivoting picks the k points whose rows are the most independent; the orthogonal matrix nearest to
        those rows (their polar factor, from an SVD) turns the embedding so that each of them lies on one axis;
        each point joins the axis on which its turned row is largest in magnitude."""
        count = self.vectors.shape[1]
        _, _, pivots = linalg.qr(self.vectors.T, pivoting=True)
        left, _, right = linalg.svd(self.vectors[pivots[:count]].T)
        turned = np.abs(self.vectors @ (left @ right))
        return turned.argmax(axis=1).astype(np.int64)


def sized_groups(points: np.ndarray, num_groups: int, first: np.ndarray) -> np.ndarray:
    """`snn-sized`'s groups, from `first`, the points' `snn-kmeans` groups: while a group holds fewer than
    MIN_GROUP_SHARE of an even share of the points, its points are set aside and the rest grouped again by
    `snn-kmeans` (at most SIZED_ROUNDS times); then each point set aside joins the group most of its nearest kept
    points are in (as many as the graph's neighbours; a tie goes to the lower group id)."""
    kept = np.arange(len(points))
    groups = first
    smallest = MIN_GROUP_SHARE * len(points) / num_groups
    for _ in range(SIZED_ROUNDS):
        small = np.flatnonzero(np.bincount(groups, minlength=num_groups) < smallest)
        left = kept[~np.isin(groups, small)]
        if len(small) == 0 or len(left) <= num_groups:
            break
        kept = left
        groups = group(points[kept], num_groups, "snn-kmeans")
    if len(kept) == len(points):
        return groups
    aside = np.setdiff1d(np.arange(len(points)), kept)
    voters = NearestNeighbors(n_neighbors=min(graph_neighbours("snn-sized", len(points)), len(kept)))
    nearest = voters.fit(points[kept]).kneighbors(points[aside], return_distance=False)
    result = np.empty(len(points), dtype=np.int64)
    result[kept] = groups
    result[aside] = [np.bincount(votes, minlength=num_groups).argmax() for votes in groups[nearest]]
    return result


def shared_neighbour_graph(points: np.ndarray, neighbours: int) -> sparse.csr_matrix:
    """`spectral`'s graph: each point joined to its `neighbours` nearest (Euclidean, itself not counted), an edge
    weighing 1 between mutual neighbours and 1/2 otherwise; each edge's weight then multiplied by the number of
    nearest neighbours its two ends share (0 to `neighbours`)."""
    count = len(points)
    nearest = NearestNeighbors(n_neighbors=neighbours).fit(points).kneighbors(return_distance=False)
    rows = np.repeat(np.arange(count), neighbours)
    lists = sparse.csr_matrix((np.ones(nearest.size), (rows, nearest.ravel())), shape=(count, count))
    return sparse.csr_matrix((lists @ lists.T).multiply(0.5 * (lists + lists.T)))


def modularity_groups(graph: sparse.csr_matrix, num_groups: int) -> np.ndarray:
    """`leiden`'s groups of a symmetric weighted graph: Leiden's communities of highest modularity at the lowest
    resolution (found by bisection) that gives at least `num_groups` of them, merged down to `num_groups` where
    there are more."""
    if not 2 <= num_groups <= graph.shape[0]:
        raise ValueError(f"cannot group a graph of {graph.shape[0]} points into {num_groups} groups")
    upper = sparse.triu(graph, k=1).tocoo()
    network = igraph.Graph(n=graph.shape[0], edges=np.column_stack([upper.row, upper.col]).tolist())
    network.es["weight"] = upper.data.tolist()

    def communities(resolution: float) -> np.ndarray:
        igraph.set_random_number_generator(random.Random(GROUPING_SEED))
        try:
            found = network.community_leiden("modularity", weights="weight", resolution=resolution, n_iterations=-1)
        finally:
            igraph.set_random_number_generator(random)
        return np.asarray(found.membership, dtype=np.int64)

    low, high = 0.0, 1.0  # fewer than num_groups communities at low; at least num_groups at high
    membership = communities(high)
    while membership.max() + 1 < num_groups:  # a point each at a high enough resolution, and num_groups <= points
        low, high = high, 2 * high
        membership = communities(high)
    for _ in range(RESOLUTION_STEPS):
        if membership.max() + 1 == num_groups:
            break
        middle = (low + high) / 2
        trial = communities(middle)
        if trial.max() + 1 >= num_groups:
            high, membership = middle, trial
        else:
            low = middle
    return _merged(graph, membership, num_groups)


def _merged(graph: sparse.csr_matrix, membership: np.ndarray, num_groups: int) -> np.ndarray:
    """Communities merged two at a time until `num_groups` are left, each time the two whose edges between them most
    exceed what their volumes alone would give (the ratio of the weight between them to the product of their
    volumes, as modularity's null model expects it); ids renumbered 0..num_groups-1."""
    count = int(membership.max()) + 1
    indicator = sparse.csr_matrix((np.ones(len(membership)), (np.arange(len(membership)), membership)))
    between = np.asarray((indicator.T @ graph @ indicator).todense())  # edge weight from each community to each
    volume = between.sum(axis=1)
    alive = np.ones(count, dtype=bool)
    for _ in range(count - num_groups):
        expected = np.outer(volume, volume)
        linkage = np.divide(between, expected, out=np.zeros_like(between), where=expected > 0)
        linkage[~alive] = -np.inf
        linkage[:, ~alive] = -np.inf
        np.fill_diagonal(linkage, -np.inf)
        kept, gone = sorted(np.unravel_index(int(np.argmax(linkage)), linkage.shape))
        between[kept] += between[gone]
        between[:, kept] += between[:, gone]
        volume[kept] += volume[gone]
        alive[gone] = False
        membership = np.where(membership == gone, kept, membership)
    return np.unique(membership, return_inverse=True)[1].astype(np.int64)


def group_epoch(
    layout: RunLayout, epoch: int | None, num_groups: int, method: GroupingMethod, device: str = "auto"
) -> tuple[int, np.ndarray]:
    """Group a run's images into `num_groups` by `method` on the convolutional representation of the convnet
    as trained in `epoch` (default: the last finished one), self-labelled for those groups first where the run
    self-labels (`selflabel`); write RUN/groups/epochNNNN-K-METHOD.parquet
    (`index`, `group`, `label`). Returns the epoch and the groups (N,). Everything is checked before anything is written.
    """
    artifacts.check_run(layout)
    epoch = run_metrics.resolve_epoch(layout, epoch)
    config = recorded_config(artifacts.read_run_record(layout)["config"])
    torch_device = runtime.resolve_device(device)
    inputs = open_inputs(layout.inputs, torch_device, config.device_budget_gb)  # over the budget: a batch at a time
    if not 2 <= num_groups <= len(inputs):
        raise ConfigError(f"groups must be between 2 and the run's {len(inputs)} images, got {num_groups}")
    model, _ = runs.load_model(layout.model(epoch), config, torch_device)
    bf16 = runtime.use_bf16(config, torch_device)
    features = representation_features(model, inputs, config.batch_size, bf16).cpu().numpy()
    groups = group(features, num_groups, method)
    if config.self_label:
        tuned = self_label(model, inputs, config, features, groups, num_groups, epoch, bf16).model
        features = representation_features(tuned, inputs, config.batch_size, bf16).cpu().numpy()
        groups = group(features, num_groups, method)
    labels = artifacts.load_array(layout.labels) if layout.labels.is_file() else None
    path = layout.groups(epoch, num_groups, method)
    path.parent.mkdir(exist_ok=True)
    artifacts.write_assignments(path, groups, labels, column="group")
    return epoch, groups


def labels_by_group(groups: np.ndarray, labels: np.ndarray, shown: int = 4) -> list[str]:
    """A line per group, largest first: its size and the labels of its images, the most frequent first (at most
    `shown`, the rest summed), each with its count and its share of the group. For reading a grouping against labels
    (what a group mixes); nothing here feeds back into a grouping."""
    counts = metrics.contingency(groups, labels)
    lines = []
    for group_id in np.argsort(-counts.sum(1), kind="stable"):
        row, size = counts[group_id], int(counts[group_id].sum())
        if size == 0:
            continue
        order = [label for label in np.argsort(-row, kind="stable") if row[label] > 0]
        parts = [f"label {label} {row[label]:,} ({row[label] / size:.1%})" for label in order[:shown]]
        rest = int(row[order[shown:]].sum())
        if rest:
            parts.append(f"other labels {rest:,} ({rest / size:.1%})")
        lines.append(f"group {group_id} ({size:,} images): " + ", ".join(parts))
    return lines
