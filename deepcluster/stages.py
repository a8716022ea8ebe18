"""The stages of a DeepCluster epoch, each one function on the in-memory `Session` (inputs on the device, model,
optimizer, the previous epoch's assignments) or on tensors: extract, reduce, cluster, training targets,
resample, retrain, score. `epoch.run_epoch` chains them. The algorithm itself lives in the modules called
here (features, reduce, kmeans, neighbours, sampling, train, metrics).

Across ranks (`distributed`), extract, reduce and cluster work on this rank's shard of the images, and
cluster returns the cluster ids of all images; from there every rank has the same targets and the same
resample, and retrain trains on this rank's part of every batch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from deepcluster import distributed, metrics
from deepcluster.balance import balance
from deepcluster.config import Config
from deepcluster.errors import DivergedError
from deepcluster.features import extract_features, features_and_representation
from deepcluster.kmeans import Clustering, centroid_means, faiss_kmeans, kmeans
from deepcluster.loader import Inputs
from deepcluster.models import ClusterHead, DeepClusterNet, PrototypeHead
from deepcluster.neighbours import merge_nearest, nearest_among, neighbour_targets
from deepcluster.reduce import PCAWhitening, apply_reduction, pca_whiten_l2
from deepcluster.rng import stage_generator, stage_seed
from deepcluster.sampling import uniform_cluster_sample
from deepcluster.train import TrainResult, train_epoch


@dataclass
class Session:
    """What the epochs of one process work on, kept in memory from epoch to epoch: the inputs (on the device, or
    read from the run's input file beyond `device_budget_gb`), the labels (evaluation only), the convnet and its
    optimizer, the last epoch's assignments."""

    config: Config
    device: torch.device
    bf16: bool
    inputs: Inputs  # uint8 (N, 1, S, S) on `device`, or the rows of the run's input file (`loader`)
    labels: np.ndarray | None
    model: DeepClusterNet
    optimizer: torch.optim.SGD
    previous_assignments: np.ndarray | None = None


def extract(session: Session, progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features (N, D) of every image of this rank's shard with the current convnet, float32 on the device, and
    from the same pass, where the soft targets' neighbours are found in it (neighbour_features='representation'),
    the L2-normalised convolutional representation (N, R); else None."""
    inputs = session.inputs[distributed.shard(len(session.inputs))]
    config = session.config
    if config.neighbours and config.neighbour_features == "representation":
        return features_and_representation(session.model, inputs, config.batch_size, progress, session.bf16)
    return extract_features(session.model, inputs, config.batch_size, progress, session.bf16), None


def reduce(features: torch.Tensor, pca_dim: int | None) -> tuple[torch.Tensor, PCAWhitening | None]:
    """PCA-whitening to `pca_dim` dimensions + L2 normalisation, and the fitted PCA; L2 normalisation only
    (and no PCA) when pca_dim is None."""
    if pca_dim is None:
        return apply_reduction(features, None), None
    return pca_whiten_l2(features, pca_dim)


def cluster(points: torch.Tensor, config: Config, epoch: int, previous: np.ndarray | None = None) -> list[Clustering]:
    """One k-means with the empty-cluster fix per head, each seeded per (run, epoch, head), of the points of all
    ranks (with assignment='balanced', reassigned in equal shares: `balance`); each clustering's assignments are
    those of all points.

    points: this rank's shard. previous: the previous epoch's assignments (head 0, all images), for
    kmeans_init='previous'.
    """
    if previous is not None:
        previous = previous[distributed.shard(len(previous))]
    clusterings = []
    for head, num_clusters in enumerate(head_clusters(config)):
        name = _per_head("kmeans", head)
        init: str | torch.Tensor = config.kmeans_init
        if init == "previous":
            init = "k-means++"
            if head == 0 and previous is not None:
                init = centroid_means(points, torch.from_numpy(previous).to(points.device), num_clusters)
        if config.kmeans_backend == "faiss":
            seed = stage_seed(config.seed, epoch, name)
            clustering = faiss_kmeans(points, num_clusters, seed, config.kmeans_iters, init)
        else:
            generator = stage_generator(config.seed, epoch, name)
            clustering = kmeans(points, num_clusters, generator, config.kmeans_iters, init)
        if config.assignment == "balanced":
            clustering = balance(points, clustering, stage_generator(config.seed, epoch, _per_head("balance", head)))
        clusterings.append(clustering)
    return [replace(each, assignments=distributed.all_gather_rows(each.assignments)) for each in clusterings]


def head_clusters(config: Config) -> list[int]:
    """k of every clustering trained on: num_heads of num_clusters, then one per extra_clusters."""
    return [config.num_clusters] * config.num_heads + list(config.extra_clusters)


def training_targets(points: torch.Tensor, clusterings: list[Clustering], config: Config) -> list[torch.Tensor]:
    """Each clustering's training targets: its cluster ids, or (config.neighbours > 0) soft targets, the
    share of each cluster among an image and its nearest neighbours in `points` (of all ranks): the clustered
    features, or the representation (`extract`)."""
    if config.neighbours == 0:
        return [clustering.assignments for clustering in clusterings]
    neighbours = distributed.all_gather_rows(_nearest_neighbours(points, config.neighbours))
    return [
        neighbour_targets(clustering.assignments, neighbours, len(clustering.centroids)) for clustering in clusterings
    ]


def _nearest_neighbours(points: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` nearest neighbours (indices among the points of all ranks) of this rank's `points`, searched
    among the shards of every rank in turn: each rank searches for its own points, holding one other shard at a
    time."""
    # a single process: its own points, once
    searches = (
        nearest_among(points, rows, count, start, itself=rows is points)
        for start, rows in distributed.each_rank_rows(points)
    )
    return functools.reduce(lambda best, found: merge_nearest(best, found, count), searches)[1]


def _per_head(stage: str, head: int) -> str:
    """The random stream of `stage` for head `head` (head 0 keeps the stage's own name)."""
    return stage if head == 0 else f"{stage}-{head}"


def resample(assignments: torch.Tensor, config: Config, epoch: int) -> torch.Tensor:
    """Indices of the epoch's training images, uniform over clusters, shuffled."""
    generator = stage_generator(config.seed, epoch, "sample")
    num_samples = max(len(assignments), config.min_epoch_samples)
    if config.max_epoch_samples is not None:
        num_samples = min(num_samples, config.max_epoch_samples)
    return uniform_cluster_sample(assignments.cpu(), config.num_clusters, generator, num_samples)


def retrain(
    session: Session,
    clusterings: list[Clustering],
    targets: list[torch.Tensor],
    sample: torch.Tensor,
    epoch: int,
    progress: bool | None = None,
) -> TrainResult:
    """New top layers (one per clustering), then train convnet + top layers one epoch on the pseudo-labels
    (in place). head=linear: re-initialised at random; head=prototypes: the clustering's centroids."""
    config, device = session.config, session.device
    heads: list[torch.nn.Module] = []
    for index, clustering in enumerate(clusterings):
        if config.head == "prototypes":
            heads.append(PrototypeHead(clustering.centroids, config.temperature).to(device))
        else:
            head = ClusterHead(session.model.feature_dim, len(clustering.centroids))
            head.reset_parameters(stage_generator(config.seed, epoch, _per_head("head", index)))
            heads.append(head.to(device))
    augment_generator = stage_generator(config.seed, epoch, "augment", device)  # ranks draw for whole batches
    # Dropout draws from torch's global generator: fork it, seeded per (run, epoch, rank), so the
    # global state outside is untouched and a re-run epoch draws the same masks.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(stage_seed(config.seed, epoch, distributed.per_rank("dropout")))
        return train_epoch(
            session.model,
            heads,
            session.optimizer,
            session.inputs,
            targets,
            sample,
            config,
            epoch,
            augment_generator,
            progress,
            session.bf16,
        )


def score_clusters(session: Session, assignments: np.ndarray) -> dict[str, Any]:
    """The epoch's clusters scored: their sizes, NMI against the previous epoch's assignments, and NMI/ACC/ARI
    against the labels where there are labels (evaluation only: nothing in training reads them)."""
    result: dict[str, Any] = {"cluster_sizes": metrics.cluster_size_stats(assignments, session.config.num_clusters)}
    previous = session.previous_assignments
    result["nmi_previous"] = None if previous is None else metrics.nmi(assignments, previous)
    if session.labels is not None:
        result["labels"] = {
            "nmi": metrics.nmi(session.labels, assignments),
            "acc": metrics.accuracy(session.labels, assignments),
            "ari": metrics.ari(session.labels, assignments),
        }
    return result


def epoch_record(
    session: Session,
    epoch: int,
    clustering: Clustering,
    trained: TrainResult,
    evaluation: dict[str, Any],
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The contents of an epoch's metrics.json."""
    return {
        "epoch": epoch,
        "num_images": len(session.inputs),
        "num_clusters": session.config.num_clusters,
        "train_loss": trained.loss,
        "kmeans_loss": clustering.loss,
        "kmeans_iterations": clustering.iterations,
        **evaluation,
        "stage_seconds": seconds,
    }


def require_finite(values: torch.Tensor | float, what: str, epoch: int, config: Config) -> None:
    """Stop with a DivergedError naming the epoch, what is not finite and what to do, if any value is NaN or infinite."""
    if bool(torch.isfinite(torch.as_tensor(values)).all()):
        return
    raise DivergedError(
        f"epoch {epoch} diverged: its {what} are not finite (NaN or infinite), so nothing of epoch {epoch} is kept. "
        f"The learning rate ({config.lr:g}) is the usual cause: continue with a lower one, "
        f"`deepcluster resume RUN_ID --lr {config.lr / 10:g}`"
    )
