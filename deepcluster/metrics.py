"""Clustering metrics: NMI, ACC (Hungarian matching), ARI, and cluster-size statistics."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def nmi(first: np.ndarray, second: np.ndarray) -> float:
    """Normalised mutual information (arithmetic mean normalisation) of two labelings."""
    return float(normalized_mutual_info_score(first, second))


def ari(first: np.ndarray, second: np.ndarray) -> float:
    """Adjusted Rand index of two labelings."""
    return float(adjusted_rand_score(first, second))


def accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Clustering accuracy: the best one-to-one map of clusters to labels (Hungarian algorithm).

    With more clusters than labels, the clusters left unmatched count as errors.
    """
    _, label_ids = np.unique(np.asarray(labels), return_inverse=True)
    _, cluster_ids = np.unique(np.asarray(clusters), return_inverse=True)
    counts = contingency(cluster_ids, label_ids)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(labels))


def contingency(clusters: np.ndarray, labels: np.ndarray, num_clusters: int | None = None) -> np.ndarray:
    """Counts (num_clusters, num_labels) of the images of each cluster with each label; clusters and labels are
    ids from 0 (num_clusters: at least the largest cluster id + 1, for clusters left empty)."""
    rows = max(int(clusters.max()) + 1, num_clusters or 0)
    counts = np.zeros((rows, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(counts, (clusters, labels), 1)
    return counts


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
