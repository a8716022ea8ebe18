"""Assign new images to the clusters of a trained run's epoch (`deepcluster predict`).

An epoch's clusters are defined by what produced them: the convnet whose features the epoch
clustered (the weights trained in the previous epoch, or the initial ones for epoch 0), the epoch's
reduction (PCA-whitening where configured: pca_mean.npy, pca_projection.npy; then L2 normalisation)
and the centroids its k-means last assigned to (centroids.npy). New images go through the same
preprocessing and land in the nearest centroid, so the training images themselves get the epoch's
assignments back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from deepcluster import artifacts, runs, runtime
from deepcluster.artifacts import RunLayout
from deepcluster.config import recorded_config
from deepcluster.data import ImageSet
from deepcluster.errors import DatasetError, RunError
from deepcluster.features import extract_features
from deepcluster.kmeans import assign
from deepcluster.reduce import PCAWhitening, apply_reduction
from deepcluster.run_metrics import resolve_epoch
from deepcluster.sobel import prepare_inputs

MODES = {1: "grayscale (1 channel)", 3: "RGB (3 channels)"}


@dataclass(frozen=True)
class Prediction:
    """For each image: its cluster (int64) and its Euclidean distance to that cluster's centroid (float32)."""

    epoch: int
    num_clusters: int
    clusters: np.ndarray
    distances: np.ndarray


def check_images(layout: RunLayout, image_shape: list[int], image_set: ImageSet) -> None:
    """The images must have the size and mode (channels) of the run's images, image_shape (C, H, W)."""
    channels, height, width = image_shape
    _, new_channels, new_height, new_width = image_set.images.shape
    if (new_height, new_width) != (height, width):
        raise DatasetError(
            f"{image_set.source}: images are {new_height}x{new_width} pixels but run {layout.run_id!r} was "
            f"trained on {height}x{width} images; resize them to {height}x{width} first"
        )
    if new_channels != channels:
        raise DatasetError(
            f"{image_set.source}: images are {MODES.get(new_channels, f'{new_channels} channels')} but run "
            f"{layout.run_id!r} was trained on {MODES.get(channels, f'{channels} channels')} images; "
            "convert them to that mode first"
        )


def predict(
    layout: RunLayout, image_set: ImageSet, epoch: int | None, device: str, progress: bool | None = None
) -> Prediction:
    """Assign every image of `image_set` to the nearest centroid of `epoch` (default: the last) of a run."""
    artifacts.check_run(layout)
    record = artifacts.read_run_record(layout)
    config = recorded_config(record["config"])
    epoch = resolve_epoch(layout, epoch)
    epoch_dir = layout.epoch_dir(epoch)
    if not (epoch_dir / artifacts.CENTROIDS).is_file():
        raise RunError(
            f"epoch {epoch} of run {layout.run_id!r} has no {artifacts.CENTROIDS}: it was written before epochs "
            "kept their centroids, so its clusters cannot take new images; train the run again"
        )
    check_images(layout, record["dataset"]["image_shape"], image_set)
    torch_device = runtime.resolve_device(device)
    model, _ = runs.load_model(layout.model_before(epoch), config, torch_device)
    inputs = torch.from_numpy(prepare_inputs(image_set.images, record["dataset"]["input_size"])).to(torch_device)
    features = extract_features(model, inputs, config.batch_size, progress, record.get("precision") == "bf16")
    pca = None
    if (epoch_dir / artifacts.PCA_MEAN).is_file():
        mean, projection = (
            torch.from_numpy(artifacts.load_array(epoch_dir / name)).to(torch_device)
            for name in (artifacts.PCA_MEAN, artifacts.PCA_PROJECTION)
        )
        pca = PCAWhitening(mean, projection)
    points = apply_reduction(features, pca)
    centroids = torch.from_numpy(artifacts.load_array(epoch_dir / artifacts.CENTROIDS)).to(torch_device)
    clusters, squared = assign(points, centroids)
    return Prediction(epoch, len(centroids), clusters.cpu().numpy(), squared.sqrt().cpu().numpy())


def write_predictions(path: Path, image_set: ImageSet, prediction: Prediction) -> None:
    """Parquet: index int64 (position in the image set), path string (folders; null otherwise),
    cluster int32, distance float32 (to the cluster's centroid), label int32 (null without labels)."""
    count = len(prediction.clusters)
    paths = pa.nulls(count, pa.string()) if image_set.paths is None else pa.array(list(image_set.paths), pa.string())
    labels = pa.nulls(count, pa.int32()) if image_set.labels is None else pa.array(image_set.labels.astype(np.int32))
    table = pa.table(
        {
            "index": pa.array(np.arange(count, dtype=np.int64)),
            "path": paths,
            "cluster": pa.array(prediction.clusters.astype(np.int32)),
            "distance": pa.array(prediction.distances),
            "label": labels,
        }
    )
    with artifacts.atomic_open(path) as handle:
        pq.write_table(table, handle, compression=artifacts.PARQUET_CODEC)
