"""Uniform sampling over pseudo-classes (Caron et al. 2018, Sec. 3.3, "Trivial parametrization").

Training images are drawn so every non-empty cluster contributes the same number of samples
(up to one), in total as many as there are images, so a huge cluster cannot dominate training.
"""

from __future__ import annotations

import torch

from deepcluster.errors import InputError


def per_cluster_counts(cluster_sizes: torch.Tensor, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """How many samples each cluster gives: num_samples split evenly over non-empty clusters.

    The remainder goes one each to randomly chosen non-empty clusters, so counts differ by at
    most one and sum to num_samples. Empty clusters give 0.
    """
    non_empty = (cluster_sizes > 0).nonzero().flatten()
    if len(non_empty) == 0:
        raise InputError("cannot sample from a clustering with no non-empty cluster")
    counts = torch.zeros(len(cluster_sizes), dtype=torch.int64)
    counts[non_empty] = num_samples // len(non_empty)
    lucky = non_empty[torch.randperm(len(non_empty), generator=generator)[: num_samples % len(non_empty)]]
    counts[lucky] += 1
    return counts


def uniform_cluster_sample(
    assignments: torch.Tensor, num_clusters: int, generator: torch.Generator, num_samples: int | None = None
) -> torch.Tensor:
    """Indices into the dataset, shuffled, balanced over clusters.

    assignments: int64 (N,) cluster ids. Returns int64 (num_samples,), default num_samples = N.
    Within a cluster, images are drawn without replacement, cycling through fresh permutations
    when the cluster is smaller than its share.
    """
    assignments = assignments.cpu()
    num_samples = len(assignments) if num_samples is None else num_samples
    sizes = torch.bincount(assignments, minlength=num_clusters)
    counts = per_cluster_counts(sizes, num_samples, generator)
    order = torch.argsort(assignments, stable=True)
    starts = torch.cumsum(sizes, 0) - sizes
    chosen = []
    for cluster in counts.nonzero().flatten().tolist():
        members = order[starts[cluster] : starts[cluster] + sizes[cluster]]
        repeats = -(-int(counts[cluster]) // len(members))  # ceil
        picks = torch.cat([torch.randperm(len(members), generator=generator) for _ in range(repeats)])
        chosen.append(members[picks[: counts[cluster]]])
    sample = torch.cat(chosen)
    return sample[torch.randperm(len(sample), generator=generator)]
