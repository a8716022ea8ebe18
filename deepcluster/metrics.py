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
    labels = np.asarray(labels)
    clusters = np.asarray(clusters)
    _, label_ids = np.unique(labels, return_inverse=True)
    _, cluster_ids = np.unique(clusters, return_inverse=True)
    contingency = np.zeros((cluster_ids.max() + 1, label_ids.max() + 1), dtype=np.int64)
    np.add.at(contingency, (cluster_ids, label_ids), 1)
    rows, cols = linear_sum_assignment(contingency, maximize=True)
    return float(contingency[rows, cols].sum() / len(labels))


def cluster_size_stats(assignments: np.ndarray, num_clusters: int) -> dict[str, float | int]:
    """Sizes of the k clusters: min, max, median, number empty, and the largest as a multiple of N/k."""
    sizes = np.bincount(np.asarray(assignments), minlength=num_clusters)
    return {
        "min": int(sizes.min()),
        "max": int(sizes.max()),
        "median": float(np.median(sizes)),
        "empty": int((sizes == 0).sum()),
        "largest_over_fair_share": float(sizes.max() * num_clusters / sizes.sum()),
    }
