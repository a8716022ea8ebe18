"""Nearest neighbours in feature space, and pseudo-labels smoothed over them.

Neighbour consistency (Van Gansbeke et al. 2020, SCAN): an image and its nearest neighbours in a
good feature space mostly share a class, so an image's training target is the distribution of the
k-means clusters of itself and its neighbours instead of its own cluster alone. Two clusters of one
class share many neighbours across their border, so their members are pulled towards each other;
clusters of different classes share few, so they stay apart. A hard one-hot target on an
over-clustering does the opposite: it pushes apart exactly the clusters that are most alike.
"""

from __future__ import annotations

import torch

from deepcluster.errors import InputError

CHUNK_ELEMENTS = {"cpu": 2**22, "cuda": 2**28}  # similarity-matrix elements per chunk
# ... but at least this many query rows a chunk: fewer read the whole pool for too little arithmetic (at 200,000
# points, chunks of 20 rows took 1.7 times as long as chunks of 256; 256 rows of 1.28 million points are 1.3 GB)
MIN_CHUNK_ROWS = 256


def nearest_neighbours(points: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` nearest other points of every point by inner product (cosine for L2-normalised points).

    points: (N, D). Returns int64 (N, count) indices, nearest first, never the point itself.
    """
    num_points = len(points)
    if not 1 <= count < num_points:
        raise InputError(f"need 1 <= neighbours < points, got {count} neighbours of {num_points} points")
    return nearest_among(points, points, count, itself=True)[1]


def nearest_among(
    queries: torch.Tensor, pool: torch.Tensor, count: int, pool_start: int = 0, itself: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `count` rows of `pool` most similar to each query by inner product (all of them where the pool is
    smaller), most similar first: (similarities, indices), the indices numbered from `pool_start`.

    itself: the pool is the queries, and a query is never its own neighbour (its similarity is -inf).
    """
    taken = min(count, len(pool))
    chunk_elements = CHUNK_ELEMENTS.get(queries.device.type, CHUNK_ELEMENTS["cpu"])
    rows_per_chunk = max(MIN_CHUNK_ROWS, chunk_elements // max(1, len(pool)))
    similarities = torch.empty((len(queries), taken), dtype=queries.dtype, device=queries.device)
    found = torch.empty((len(queries), taken), dtype=torch.int64, device=queries.device)
    for start in range(0, len(queries), rows_per_chunk):
        stop = min(start + rows_per_chunk, len(queries))
        similarity = queries[start:stop] @ pool.T
        if itself:
            similarity[torch.arange(stop - start), torch.arange(start, stop)] = float("-inf")
        similarities[start:stop], found[start:stop] = similarity.topk(taken, dim=1)
    return similarities, found + pool_start


def merge_nearest(
    first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor], count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `count` most similar of two searches of the same queries in different pools (`nearest_among`)."""
    similarities = torch.cat([first[0], second[0]], dim=1)
    indices = torch.cat([first[1], second[1]], dim=1)
    best = similarities.topk(min(count, similarities.shape[1]), dim=1)
    return best.values, indices.gather(1, best.indices)


def neighbour_targets(assignments: torch.Tensor, neighbours: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Soft pseudo-labels (N, k): the share of each cluster among a point and its neighbours.

    assignments: int64 (N,) cluster ids; neighbours: int64 (N, m). Each row sums to 1.
    """
    members = torch.cat([assignments.unsqueeze(1), assignments[neighbours]], dim=1)  # (N, m + 1)
    targets = torch.zeros((len(assignments), num_clusters), dtype=torch.float32, device=assignments.device)
    targets.scatter_add_(1, members, torch.ones_like(members, dtype=torch.float32))
    return targets / members.shape[1]
