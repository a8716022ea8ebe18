"""Clustering metrics: NMI, ACC (Hungarian matching), ARI, and cluster-size statistics.

NMI and ARI are computed here from the two labelings' contingency table, as scikit-learn defines them
(`normalized_mutual_info_score` with its default arithmetic mean, `adjusted_rand_score`; a test holds them
equal): every epoch scores its clusters with them, and importing scikit-learn's metrics would add about a
second and 150 MB to every process that trains.
"""

from __future__ import annotations

import numpy as np


def nmi(first: np.ndarray, second: np.ndarray) -> float:
    """Normalised mutual information of two labelings: their mutual information over the arithmetic mean of
    their entropies; 1 when both put everything in one group, 0 when they share no information."""
    joint = _table(first, second) / len(first)
    if joint.shape == (1, 1):
        return 1.0
    rows, cols = joint.sum(axis=1), joint.sum(axis=0)
    shared = joint > 0
    information = float(np.sum(joint[shared] * np.log(joint[shared] / np.outer(rows, cols)[shared])))
    if information <= 0:
        return 0.0
    entropies = -np.sum(rows * np.log(rows)) - np.sum(cols * np.log(cols))
    return information / (entropies / 2)


def ari(first: np.ndarray, second: np.ndarray) -> float:
    """Adjusted Rand index of two labelings: the pairs of items both put together, against chance."""
    table = _table(first, second)

    def pairs(counts: np.ndarray) -> float:
        return float(np.sum(counts * (counts - 1)) / 2)

    together, first_pairs, second_pairs = pairs(table), pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    if together == first_pairs == second_pairs:  # no pair together in one labeling and apart in the other
        return 1.0
    expected = first_pairs * second_pairs / pairs(np.array([len(first)]))
    most = (first_pairs + second_pairs) / 2
    return (together - expected) / (most - expected)


def _table(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The contingency table (float) of two labelings of any values."""
    if len(first) != len(second) or len(first) == 0:
        raise ValueError(f"need two non-empty labelings of the same length, got {len(first)} and {len(second)} items")
    _, first_ids = np.unique(np.asarray(first), return_inverse=True)
    _, second_ids = np.unique(np.asarray(second), return_inverse=True)
    return contingency(first_ids.ravel(), second_ids.ravel()).astype(np.float64)


def accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Clustering accuracy: the best one-to-one map of clusters to labels (Hungarian algorithm).

    With more clusters than labels, the clusters left unmatched count as errors.
    """
    from scipy.optimize import linear_sum_assignment  # here: only runs with labels need it

    counts = _table(clusters, labels)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(labels))


def contingency(clusters: np.ndarray, labels: np.ndarray, num_clusters: int | None = None) -> np.ndarray:
    """Counts (num_clusters, num_labels) of the images of each cluster with each label; clusters and labels are
    ids from 0 (num_clusters: at least the largest cluster id + 1, for clusters left empty)."""
    shape = (max(int(clusters.max()) + 1, num_clusters or 0), int(labels.max()) + 1)
    cells = np.ravel_multi_index((clusters, labels), shape)
    return np.bincount(cells, minlength=shape[0] * shape[1]).reshape(shape)


def largest_over_fair_share(sizes: np.ndarray) -> float:
    """The largest cluster's size as a multiple of a fair share (N/k), from the k clusters' sizes."""
    return float(sizes.max() * len(sizes) / sizes.sum())


def cluster_size_stats(assignments: np.ndarray, num_clusters: int) -> dict[str, float | int]:
    """Sizes of the k clusters: min, max, median, number empty, and the largest as a multiple of N/k."""
    sizes = np.bincount(np.asarray(assignments), minlength=num_clusters)
    return {
        "min": int(sizes.min()),
        "max": int(sizes.max()),
        "median": float(np.median(sizes)),
        "empty": int((sizes == 0).sum()),
        "largest_over_fair_share": largest_over_fair_share(sizes),
    }
