"""Assign new images to the clusters of a trained run's epoch (`deepcluster predict`).

An epoch's clusters are defined by what produced them: the convnet whose features the epoch
clustered (the weights trained in the previous epoch, or the initial ones for epoch 0), the epoch's
reduction (PCA-whitening where configured: pca_mean.npy, pca_projection.npy; then L2 normalisation)
and the centroids its k-means last assigned to (centroids.npy). New images go through the same
preprocessing and land in the nearest centroid, so the training images themselves get the epoch's
assignments back (with assignment=balanced, the centroids are the means of the equal-share clusters, and an image
at a cluster's border may land in the neighbouring one: the equal shares are a property of the whole epoch, not of
one image).

A folder, for a run trained on one, is read as the run read its own: through the input store, a batch at a
time, so that a folder larger than memory can be assigned. Other images are read into memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from deepcluster import artifacts, runs, runtime, store
from deepcluster.artifacts import RunLayout
from deepcluster.config import DATASET_NAMES, Config, recorded_config
from deepcluster.data import ImageSet, load_dataset
from deepcluster.errors import DatasetError, RunError
from deepcluster.features import extract_features
from deepcluster.kmeans import assign
from deepcluster.loader import FileRows, Inputs
from deepcluster.models import ARCHS
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


@dataclass(frozen=True)
class Images:
    """Images to assign: the network's inputs, uint8 (N, 1, S, S), in memory or the rows of an input store's file;
    their labels and file paths (None where they have none), and where they came from."""

    inputs: Inputs
    labels: np.ndarray | None
    paths: Sequence[str] | None
    source: str


def images_to_predict(layout: RunLayout, config: Config) -> Images:
    """The images that `config` selects (dataset, split, classes, limit) as inputs of the run's network. A folder,
    for a run trained on one, through the input store (ingested at the run's input size where it is not yet);
    other images checked against the run's (size, mode) and prepared in memory."""
    record = artifacts.read_run_record(layout)
    trained_on, size = record["dataset"], record["dataset"]["input_size"]
    if "store" in trained_on and config.dataset not in DATASET_NAMES:
        stored = _folder_store(Path(config.dataset), recorded_config(record["config"]), Path(trained_on["store"]), size)
        keep, labels = stored.select(config.classes, config.limit)
        paths = pq.read_table(stored.files, columns=["path"]).column("path").to_pylist()
        return Images(FileRows(stored.inputs, keep), labels, [paths[index] for index in keep], stored.source())
    image_set = load_dataset(config)
    check_images(layout, trained_on["image_shape"], image_set)
    inputs = torch.from_numpy(prepare_inputs(image_set.images, size))
    return Images(inputs, image_set.labels, image_set.paths, image_set.source)


def _folder_store(folder: Path, trained: Config, own: Path, size: int) -> store.StoredImages:
    """The input store of `folder` at the run's input size `size`: the run's own store `own` where `folder` is,
    unchanged, the folder the run was trained on (nothing decoded again), else a store at that size."""
    listing = store.list_folder(folder)
    min_size = ARCHS[trained.arch].default_input_size
    if own.name == store.store_key(listing, trained.image_size, min_size) and (own / "meta.json").is_file():
        return store.ingest_folder(folder, trained.image_size, min_size, own.parent, listing=listing)
    return store.ingest_folder(folder, size, size, listing=listing)


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
    layout: RunLayout, inputs: Inputs, epoch: int | None, device: str, progress: bool | None = None
) -> Prediction:
    """Assign every image of `inputs` (`Images.inputs`) to the nearest centroid of `epoch` (default: the last) of
    a run. Inputs in a file are read a batch at a time."""
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
    torch_device = runtime.resolve_device(device)
    model, _ = runs.load_model(layout.model_before(epoch), config, torch_device)
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.to(torch_device)
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


def write_predictions(path: Path, images: Images, prediction: Prediction) -> None:
    """Parquet: index int64 (position among the images), path string (folders; null otherwise),
    cluster int32, distance float32 (to the cluster's centroid), label int32 (null without labels)."""
    count = len(prediction.clusters)
    paths = pa.nulls(count, pa.string()) if images.paths is None else pa.array(list(images.paths), pa.string())
    labels = pa.nulls(count, pa.int32()) if images.labels is None else pa.array(images.labels.astype(np.int32))
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
