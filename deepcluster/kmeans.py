"""k-means in torch on the features' device, with DeepCluster's fix against empty clusters.

Empty clusters (Caron et al. 2018, Sec. 3.3, "Empty clusters"): while a cluster is empty, pick a
non-empty cluster with probability proportional to its size, give the empty cluster a copy of its
centroid with a small symmetric perturbation (c(1+eps), c(1-eps)) and re-split its points between
the two. Where the split cannot separate the points (e.g. all duplicates), half of them, chosen at
random, move. So for N >= k no cluster is ever empty.

Initialisation: k distinct random points, or k-means++ (Arthur & Vassilvitskii 2007) in its greedy
form: each new centroid is the best, by total squared distance, of a few candidates drawn with
probability proportional to the squared distance to the nearest centroid so far. k-means++ makes
the clustering of an epoch depend far less on the seed, so consecutive epochs agree where the
features do.

Distances are computed in chunks of rows, never as a full N x k matrix. Lloyd's iterations stop
early once the assignments no longer change: from there every further iteration is the identity.

Across ranks (`distributed`, as DeepCluster-v2 does): `points` is each rank's shard. Each rank assigns its own
points; the centroids' sums and counts, the changed assignments, the seeding's distances and the empty-cluster
fix's splits are summed over the ranks, and every random draw is made identically on every rank from the same
generator over global indices. So the ranks agree on every centroid, and the result is the single-process
clustering of all the points but for the order of floating-point sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from deepcluster.distributed import (
    all_gather_rows,
    all_reduce_sum,
    broadcast_from_writer,
    is_writer,
    row_offset,
    rows_at,
)
from deepcluster.errors import InputError, MissingPackageError

PERTURBATION = 1e-4
CHUNK_ELEMENTS = {"cpu": 2**20, "cuda": 2**28}  # distance-matrix elements per chunk: 4 MiB (stays in cache) / 1 GiB


@dataclass(frozen=True)
class Clustering:
    """assignments: int64 (N,) in [0, k); centroids: (k, d), the mean of each cluster's points; loss: mean
    squared distance to the assigned centroid; iterations: Lloyd iterations run (fewer than asked when the
    assignments stopped changing); assigned_to: (k, d), the centroids of the last assignment step, so each
    point's assignment is its nearest of these (but for points the empty-cluster fix moved in that step).
    Once k-means has converged the two sets of centroids are the same.
    """

    assignments: torch.Tensor  # of this rank's points (`distributed`); of all points in a single process
    centroids: torch.Tensor
    loss: float
    iterations: int
    assigned_to: torch.Tensor


def assign(
    points: torch.Tensor, centroids: torch.Tensor, point_norms: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each point. Returns (assignments int64 (N,), squared distances (N,)).

    point_norms: the points' squared norms, when the caller already has them.
    """
    num_clusters = len(centroids)
    if point_norms is None:
        point_norms = (points * points).sum(dim=1)
    centroid_norms = (centroids * centroids).sum(dim=1)
    chunk_elements = CHUNK_ELEMENTS.get(points.device.type, CHUNK_ELEMENTS["cpu"])
    rows_per_chunk = max(1, chunk_elements // num_clusters)
    assignments = torch.empty(len(points), dtype=torch.int64, device=points.device)
    distances = torch.empty(len(points), dtype=points.dtype, device=points.device)
    for start in range(0, len(points), rows_per_chunk):
        stop = start + rows_per_chunk
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is constant per row, added after the argmin.
        partial = torch.addmm(centroid_norms, points[start:stop], centroids.T, alpha=-2.0)
        torch.min(partial, dim=1, out=(distances[start:stop], assignments[start:stop]))
    distances.add_(point_norms).clamp_(min=0)
    return assignments, distances


def centroid_means(points: torch.Tensor, assignments: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """The mean of each cluster's points (k, d) over all ranks; a cluster with no point gets the origin."""
    sums, counts = cluster_totals(points, assignments, num_clusters)
    return sums / counts.clamp(min=1).unsqueeze(1)


def cluster_totals(
    points: torch.Tensor, assignments: torch.Tensor, num_clusters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sum of each cluster's points (k, d) and their number (k,), in the points' dtype, over all ranks."""
    totals = torch.zeros((num_clusters, points.shape[1] + 1), dtype=points.dtype, device=points.device)
    totals[:, :-1].index_add_(0, assignments, points)
    totals[:, -1] = torch.bincount(assignments, minlength=num_clusters).to(points.dtype)
    all_reduce_sum(totals)
    return totals[:, :-1], totals[:, -1]


def fill_empty_clusters(
    points: torch.Tensor, assignments: torch.Tensor, centroids: torch.Tensor, generator: torch.Generator
) -> int:
    """Split non-empty clusters until none is empty. Modifies assignments and centroids in place.

    Returns the number of clusters that were empty. Needs N >= k (N: the points of all ranks).
    """
    num_clusters = len(centroids)
    counts = all_reduce_sum(torch.bincount(assignments, minlength=num_clusters))
    empty_clusters = (counts == 0).nonzero().flatten().tolist()
    for empty in empty_clusters:
        # Only clusters with >= 2 points can give some away; one exists while a cluster is empty and N >= k.
        weights = torch.where(counts >= 2, counts, 0).double()
        donor = int(torch.multinomial(weights.cpu(), 1, generator=generator))
        members = (assignments == donor).nonzero().flatten()
        centroid = centroids[donor].clone()
        centroids[empty] = centroid * (1 + PERTURBATION)
        centroids[donor] = centroid * (1 - PERTURBATION)
        member_points = points[members]
        to_empty = ((member_points - centroids[empty]) ** 2).sum(1) < ((member_points - centroids[donor]) ** 2).sum(1)
        moving = all_reduce_sum(torch.stack([to_empty.sum(), torch.tensor(len(members), device=to_empty.device)]))
        if moving[0] == moving[1] or moving[0] == 0:
            # The split cannot separate them: half of the donor's points (of all ranks), chosen at random, move.
            offset, total = row_offset(len(members), members.device)
            order = torch.randperm(total, generator=generator)
            moved = torch.zeros(total, dtype=torch.bool)
            moved[order[: total // 2]] = True
            to_empty = moved[offset : offset + len(members)].to(members.device)
        assignments[members[to_empty]] = empty
        sums, sizes = cluster_totals(member_points, to_empty.long(), 2)
        centroids[empty], centroids[donor] = sums[1] / sizes[1], sums[0] / sizes[0]
        counts[empty] = int(sizes[1])
        counts[donor] -= counts[empty]
    return len(empty_clusters)


def kmeans_plus_plus(
    points: torch.Tensor, num_clusters: int, generator: torch.Generator, point_norms: torch.Tensor | None = None
) -> torch.Tensor:
    """Greedy k-means++ seeding: (k, d) initial centroids, points of any rank. generator: a CPU generator."""
    if point_norms is None:
        point_norms = (points * points).sum(dim=1)
    offset, total = row_offset(len(points), points.device)
    trials = 2 + int(math.log(num_clusters))
    first = int(torch.randint(total, (1,), generator=generator))
    chosen = [first]
    nearest = _squared_distances(points, rows_at(points, torch.tensor([first]), offset), point_norms)[:, 0]
    for _ in range(1, num_clusters):
        weights = all_gather_rows(nearest).double().cpu()
        if weights.sum() <= 0:  # every point sits on a centroid already: any unused point will do
            weights = torch.ones_like(weights)
            weights[chosen] = 0
        candidates = torch.multinomial(weights, trials, replacement=True, generator=generator)
        others = rows_at(points, candidates, offset)
        distances = torch.minimum(nearest.unsqueeze(1), _squared_distances(points, others, point_norms))
        best = int(all_reduce_sum(distances.sum(dim=0)).argmin())
        chosen.append(int(candidates[best]))
        nearest = distances[:, best]
    return rows_at(points, torch.tensor(chosen), offset).clone()


def _squared_distances(points: torch.Tensor, others: torch.Tensor, point_norms: torch.Tensor) -> torch.Tensor:
    """(N, m) squared distances from points to a few other points, clamped at 0."""
    products = torch.addmm((others * others).sum(dim=1), points, others.T, alpha=-2.0)
    return products.add_(point_norms.unsqueeze(1)).clamp_(min=0)


def kmeans(
    points: torch.Tensor,
    num_clusters: int,
    generator: torch.Generator,
    iterations: int = 20,
    init: str | torch.Tensor = "random",
) -> Clustering:
    """Lloyd's k-means on points (N, d), initialised with k distinct random points ('random'), by
    k-means++ ('k-means++'), or from given (k, d) centroids.

    generator: a CPU torch.Generator; every random draw (initialisation, empty-cluster fixes) uses it.
    """
    offset, num_points = row_offset(len(points), points.device)
    if num_clusters < 2:
        raise InputError(f"k-means needs k >= 2, got {num_clusters}")
    if num_clusters > num_points:
        raise InputError(f"k-means with k={num_clusters} needs at least as many points, got {num_points}")
    if iterations < 1:
        raise InputError(f"k-means needs at least 1 iteration, got {iterations}")
    point_norms = (points * points).sum(dim=1)
    if isinstance(init, torch.Tensor):
        if init.shape != (num_clusters, points.shape[1]):
            raise InputError(f"initial centroids must be ({num_clusters}, {points.shape[1]}), got {tuple(init.shape)}")
        centroids = init.to(points.device, points.dtype).clone()
    elif init == "k-means++":
        centroids = kmeans_plus_plus(points, num_clusters, generator, point_norms)
    elif init == "random":
        initial = torch.randperm(num_points, generator=generator)[:num_clusters]
        centroids = rows_at(points, initial, offset).clone()
    else:
        raise InputError(f"unknown k-means initialisation {init!r}: expected 'random' or 'k-means++'")
    previous = None
    done = 0
    while done < iterations:
        done += 1
        assignments, _ = assign(points, centroids, point_norms)
        refilled = fill_empty_clusters(points, assignments, centroids, generator)
        assigned_to = centroids
        if not refilled and previous is not None and not _changed(assignments, previous):
            break  # converged: the centroids below would equal the current ones
        centroids = centroid_means(points, assignments, num_clusters)
        previous = assignments
    return Clustering(assignments, centroids, mean_squared_distance(points, assignments, centroids), done, assigned_to)


def _changed(assignments: torch.Tensor, previous: torch.Tensor) -> bool:
    """Whether any point of any rank changed cluster."""
    changed = torch.tensor(int(not torch.equal(assignments, previous)), device=assignments.device)
    return bool(all_reduce_sum(changed))


def mean_squared_distance(points: torch.Tensor, assignments: torch.Tensor, centroids: torch.Tensor) -> float:
    """Mean squared distance of each point (of all ranks) to the centroid it is assigned to."""
    totals = torch.stack(
        [((points - centroids[assignments]) ** 2).sum(), torch.tensor(len(points), device=points.device)]
    ).double()
    all_reduce_sum(totals)
    return float(totals[0] / totals[1])


def faiss_kmeans(
    points: torch.Tensor, num_clusters: int, seed: int, iterations: int = 20, init: str | torch.Tensor = "random"
) -> Clustering:
    """The same clustering with faiss (optional backend), then the empty-cluster fix for safety.
    init: 'random' (faiss's own), 'k-means++' (this module's seeding) or (k, d) initial centroids.
    Across ranks, faiss clusters the points of all ranks on the writer, and the ranks assign their own."""
    try:
        import faiss
    except ImportError:
        raise MissingPackageError("kmeans_backend='faiss' needs the faiss package: pip install faiss-cpu") from None
    generator = torch.Generator().manual_seed(seed)
    if isinstance(init, str) and init == "k-means++":
        init = kmeans_plus_plus(points, num_clusters, generator)
    everything = all_gather_rows(points)
    centroids = torch.zeros((num_clusters, points.shape[1]), dtype=torch.float32)
    ran = torch.tensor([iterations])
    if is_writer():
        data = everything.detach().float().cpu().contiguous().numpy()
        model = faiss.Kmeans(data.shape[1], num_clusters, niter=iterations, seed=seed % 2**31, verbose=False)
        if isinstance(init, torch.Tensor):
            model.train(data, init_centroids=init.float().cpu().contiguous().numpy())
        else:
            model.train(data)
        centroids = torch.from_numpy(model.centroids)
        ran[0] = iterations if model.obj is None else len(model.obj)  # faiss stops early when converged
    del everything
    centroids = broadcast_from_writer(centroids.to(points.device)).to(points.dtype)
    ran = broadcast_from_writer(ran.to(points.device))
    assignments, _ = assign(points, centroids)
    fill_empty_clusters(points, assignments, centroids, generator)
    means = centroid_means(points, assignments, num_clusters)
    return Clustering(assignments, means, mean_squared_distance(points, assignments, means), int(ran), centroids)
