"""One Prefect task per stage of a DeepCluster epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from deepcluster import pipeline
from deepcluster.artifacts import RunLayout
from deepcluster.config import Config
from deepcluster.pipeline import DatasetInfo

stage = task(cache_policy=NO_CACHE, persist_result=False)


@stage
def ingest(config: Config, layout: RunLayout) -> DatasetInfo:
    """Load and validate the dataset; create the run or check it can be continued."""
    return pipeline.ingest(config, layout)


@stage
def sobel_preprocess(layout: RunLayout, image_size: int) -> Path:
    """Grayscale and resize the images for the fixed Sobel front."""
    return pipeline.sobel_preprocess(layout, image_size)


@stage
def extract_features(layout: RunLayout, config: Config, epoch: int, device: str, progress: bool | None) -> Path:
    """Features of every image with the current convnet."""
    return pipeline.extract(layout, config, epoch, torch.device(device), progress)


@stage
def pca_reduce(raw_features: Path, pca_dim: int, device: str) -> Path:
    """PCA-whitening + L2 normalisation of the features."""
    return pipeline.reduce(raw_features, pca_dim, torch.device(device))


@stage
def cluster_kmeans(features: Path, layout: RunLayout, config: Config, epoch: int, device: str) -> tuple[Path, float]:
    """k-means with the empty-cluster fix; returns the assignments and the k-means loss."""
    return pipeline.cluster(features, layout, config, epoch, torch.device(device))


@stage
def balanced_resample(assignments: Path, config: Config, epoch: int) -> Path:
    """Training indices sampled uniformly over clusters."""
    return pipeline.resample(assignments, config, epoch)


@stage
def retrain(
    layout: RunLayout, config: Config, epoch: int, assignments: Path, sample: Path, device: str, progress: bool | None
) -> float:
    """One epoch of training on the pseudo-labels; returns the mean loss."""
    return pipeline.retrain(layout, config, epoch, assignments, sample, torch.device(device), progress).loss


@stage
def evaluate_nmi(layout: RunLayout, epoch: int, assignments: Path, num_clusters: int) -> dict[str, Any]:
    """NMI against the previous epoch and, where labels exist, NMI/ACC/ARI against them."""
    return pipeline.evaluate(layout, epoch, assignments, num_clusters)


@stage
def commit_epoch(layout: RunLayout, epoch: int, epoch_metrics: dict[str, Any]) -> Path:
    """Write metrics, manifest, and rename the epoch into place."""
    return pipeline.finish_epoch(layout, epoch, epoch_metrics)
