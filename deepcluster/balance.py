"""Balanced cluster assignments: SeLa's self-labelling (Asano, Rupprecht & Vedaldi 2020), a config option.

k-means lets a cluster grow as large as the features make it. SeLa asks instead for the assignment of the N
points to k clusters that best follows the points' similarities to the clusters under the constraint that every
cluster takes an equal share N/k: an optimal-transport problem, whose entropy-regularised solution
Q = diag(u) exp(S / eps) diag(v) the alternate row and column scalings of Sinkhorn-Knopp find (as SwAV does for a
batch). Here S is the similarity of each point to the centroids of the epoch's k-means, -|x - c|^2 / 2, in units
of the k-means' mean squared distance (so that eps means the same for features spread widely or tightly; a fixed
eps on tightly packed features leaves Q so flat that its largest entries are as unequal as k-means' clusters), and
eps = 0.1. Each point then takes the cluster of its largest entry in Q: its nearest centroid once each cluster's
similarities are shifted by eps log v, so a large cluster gives the points at its border to its smaller neighbours.
The clusters so taken are within about 15 % of N/k (measured on 5,000 learned features at k = 30, where k-means'
clusters ranged from 0.5 to 1.6 N/k, and on 300 images at k = 10); 0.05 balanced as well on the first and less on
the second, 0.3 less on the first.

Across ranks (`distributed`), each rank scales its own points' rows; the columns' sums are summed over the ranks.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from deepcluster.distributed import all_reduce_sum, row_offset
from deepcluster.kmeans import CHUNK_ELEMENTS, Clustering, centroid_means, fill_empty_clusters, mean_squared_distance

EPSILON = 0.1  # the transport's entropy weight, in units of the mean squared distance
MAX_ITERATIONS = 200
TOLERANCE = 1e-3  # stop once every cluster's share is within 0.1 % of N/k


def balanced_shift(points: torch.Tensor, centroids: torch.Tensor, spread: float) -> torch.Tensor:
    """Each cluster's shift (k,) of its similarities (in units of eps) under which every cluster's share of the
    points' softmax is N/k (to TOLERANCE, or after MAX_ITERATIONS scalings), float64. spread: the points' mean
    squared distance to their k-means centroid, the similarities' unit."""
    num_clusters = len(centroids)
    _, total = row_offset(len(points), points.device)
    fair_share = total / num_clusters
    shift = torch.zeros(num_clusters, dtype=torch.float64, device=points.device)
    for _ in range(MAX_ITERATIONS):
        shares = torch.zeros_like(shift)
        for scores in _scores(points, centroids, spread):
            shares += torch.softmax(scores + shift, dim=1).sum(dim=0)
        all_reduce_sum(shares)
        if float((shares / fair_share - 1).abs().max()) < TOLERANCE:
            break
        shift += (fair_share / shares.clamp(min=torch.finfo(torch.float64).tiny)).log()
    return shift


def balanced_assign(points: torch.Tensor, centroids: torch.Tensor, spread: float) -> torch.Tensor:
    """Cluster ids (N,) of this rank's points, int64: SeLa's equal-share assignment to `centroids` (k, d)."""
    shift = balanced_shift(points, centroids, spread)
    return torch.cat([(scores + shift).argmax(dim=1) for scores in _scores(points, centroids, spread)])


def balance(points: torch.Tensor, clustering: Clustering, generator: torch.Generator) -> Clustering:
    """A k-means clustering's points reassigned to its centroids in equal shares (`balanced_assign`), then the
    empty-cluster fix (a cluster whose share is spread over points that each prefer another) and each cluster's
    mean as its centroid. `assigned_to` is those means: a new image (`predict`) goes to the nearest of them."""
    if clustering.loss <= 0:  # every point on its centroid: nothing at a border to move
        return clustering
    assignments = balanced_assign(points, clustering.centroids, clustering.loss)
    centroids = centroid_means(points, assignments, len(clustering.centroids))
    fill_empty_clusters(points, assignments, centroids, generator)  # leaves each centroid its cluster's mean
    loss = mean_squared_distance(points, assignments, centroids)
    return Clustering(assignments, centroids, loss, clustering.iterations, centroids)


def _scores(points: torch.Tensor, centroids: torch.Tensor, spread: float) -> Iterator[torch.Tensor]:
    """The similarities S / eps of the points to the centroids, float64, a chunk of rows at a time (never N x k)."""
    halved_norms = (centroids * centroids).sum(dim=1) / 2
    rows_per_chunk = max(1, CHUNK_ELEMENTS.get(points.device.type, CHUNK_ELEMENTS["cpu"]) // len(centroids))
    for start in range(0, len(points), rows_per_chunk):
        products = torch.addmm(-halved_norms, points[start : start + rows_per_chunk], centroids.T)
        yield products.double() / (EPSILON * spread)
