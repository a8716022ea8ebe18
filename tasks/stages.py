"""One Prefect task per stage of a DeepCluster run.

The set-up tasks work on the run directory. The epoch tasks take and return in-memory values (the
`Session`, tensors): with no cache policy and no result persistence Prefect neither hashes nor
pickles them, so a task call costs a few milliseconds whatever the size of its arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from deepcluster import ranks, runs, stages
from deepcluster.artifacts import RunLayout
from deepcluster.config import Config, GroupingMethod
from deepcluster.kmeans import Clustering
from deepcluster.reduce import PCAWhitening
from deepcluster.runs import DatasetInfo
from deepcluster.stages import Session
from deepcluster.train import TrainResult

stage = task(cache_policy=NO_CACHE, persist_result=False)


@stage
def ingest(config: Config, layout: RunLayout) -> DatasetInfo:
    """Load and validate the dataset; create the run or check it can be continued."""
    return runs.ingest(config, layout)


@stage
def sobel_preprocess(layout: RunLayout, image_size: int) -> Path:
    """Grayscale and resize the images for the fixed Sobel front."""
    return runs.sobel_preprocess(layout, image_size)


@stage
def load_session(layout: RunLayout, config: Config, epoch: int, device: str) -> Session:
    """Inputs, model and optimizer as they enter `epoch`, from the run's files."""
    return runs.open_session(layout, config, epoch, torch.device(device))


@stage
def extract_features(session: Session, progress: bool | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features of every image with the current convnet (and its convolutional representation, where the soft
    targets' neighbours are found in it)."""
    return stages.extract(session, progress)


@stage
def pca_reduce(features: torch.Tensor, pca_dim: int | None) -> tuple[torch.Tensor, PCAWhitening | None]:
    """PCA-whitening (unless pca_dim is None) + L2 normalisation of the features, and the fitted PCA."""
    return stages.reduce(features, pca_dim)


@stage
def cluster_kmeans(
    points: torch.Tensor, config: Config, epoch: int, previous: np.ndarray | None = None
) -> list[Clustering]:
    """k-means with the empty-cluster fix, once per head (seeded from `previous` where configured)."""
    return stages.cluster(points, config, epoch, previous)


@stage
def training_targets(points: torch.Tensor, clusterings: list[Clustering], config: Config) -> list[torch.Tensor]:
    """Each clustering's training targets: its cluster ids, or their share among each image's neighbours."""
    return stages.training_targets(points, clusterings, config)


@stage
def balanced_resample(assignments: torch.Tensor, config: Config, epoch: int) -> torch.Tensor:
    """Training indices sampled uniformly over clusters."""
    return stages.resample(assignments, config, epoch)


@stage
def retrain(
    session: Session,
    clusterings: list[Clustering],
    targets: list[torch.Tensor],
    sample: torch.Tensor,
    epoch: int,
    progress: bool | None,
) -> TrainResult:
    """One epoch of training on the pseudo-labels (updates the session's model and optimizer)."""
    return stages.retrain(session, clusterings, targets, sample, epoch, progress)


@stage
def score_clusters(session: Session, assignments: np.ndarray) -> dict[str, Any]:
    """The clusters' sizes, NMI against the previous epoch and, where labels exist, NMI/ACC/ARI against them."""
    return stages.score_clusters(session, assignments)


@stage
def train_on_ranks(
    layout: RunLayout, config: Config, on_epoch: Callable[[dict[str, Any]], None], on_output: Callable[[str], None]
) -> None:
    """The run's remaining epochs trained by config.ranks processes (torchrun); on_epoch(metrics) as each is
    committed."""
    ranks.train_on_ranks(layout, config, on_epoch, on_output)


# The task of each epoch stage (epoch.run_epoch calls these functions)
EPOCH_TASKS: dict[Callable[..., Any], Task[..., Any]] = {
    stages.extract: extract_features,
    stages.reduce: pca_reduce,
    stages.cluster: cluster_kmeans,
    stages.training_targets: training_targets,
    stages.resample: balanced_resample,
    stages.retrain: retrain,
    stages.score_clusters: score_clusters,
}


def run_as_task(function: Callable[..., Any], *args: Any) -> Any:
    """Run an epoch stage as its Prefect task (the `stage` of epoch.run_epoch in the flow)."""
    return EPOCH_TASKS[function](*args)


@stage
def write_groups(layout: RunLayout, num_groups: int, method: GroupingMethod, device: str) -> Path:
    """The last epoch's images in `num_groups` groups by `method` on the learned features (RUN/groups/)."""
    from deepcluster import grouping  # scikit-learn: imported when a run is grouped, not by every training process

    epoch, _ = grouping.group_epoch(layout, None, num_groups, method, device)
    return layout.groups(epoch, num_groups, method)


@stage
def write_report(layout: RunLayout) -> Path:
    """The run's HTML report (RUN/report/index.html) from its artifacts."""
    from deepcluster import html_report  # matplotlib: imported once training is over

    return html_report.write_report(layout)
