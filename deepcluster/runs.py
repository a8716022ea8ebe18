"""Runs: create a run (ingest the dataset, record run.json, the Sobel inputs, the initial model), check that a
run can be continued as asked, open a session from a run's files (how a run resumes), and write an epoch's
outputs into the run (`RunOutputs`, on the background writer) and commit it."""

from __future__ import annotations

import hashlib
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from deepcluster import __version__, artifacts, store
from deepcluster.artifacts import ArtifactWriter, RunLayout
from deepcluster.config import DATASET_NAMES, EXTENDABLE_KEYS, LOCATION_KEYS, Config, recorded_config
from deepcluster.data import ImageSet, load_dataset
from deepcluster.errors import ConfigError, DatasetError, RunError
from deepcluster.kmeans import Clustering
from deepcluster.loader import open_inputs, place_inputs
from deepcluster.models import ARCHS, DeepClusterNet
from deepcluster.reduce import PCAWhitening
from deepcluster.rng import INIT_EPOCH, stage_generator
from deepcluster.runtime import resolve_device, use_bf16
from deepcluster.sobel import prepare_inputs
from deepcluster.stages import Session, head_clusters
from deepcluster.train import make_optimizer


@dataclass(frozen=True)
class DatasetInfo:
    """What later stages need to know of the ingested dataset (small, passed between tasks)."""

    num_images: int
    image_size: int
    has_labels: bool
    fingerprint: str


def effective_image_size(config: Config, native_size: int) -> int:
    """The configured size, else the native one raised to the architecture's default input size."""
    return config.image_size or max(native_size, ARCHS[config.arch].default_input_size)


def validate_for_dataset(config: Config, num_images: int, image_shape: tuple[int, ...], source: str) -> int:
    """Check the config against the data (its number of images, their height and width); returns the image side
    the network will see."""
    height, width = image_shape
    if num_images == 0:
        raise ConfigError(f"dataset {source} has no images after the class filter and limit")
    largest_k = max(head_clusters(config))
    if largest_k > num_images:
        raise ConfigError(f"k={largest_k} is larger than the number of images ({num_images})")
    if config.neighbours >= num_images:
        raise ConfigError(
            f"neighbours={config.neighbours} must be below the number of images ({num_images}): "
            f"set neighbours to at most {num_images - 1} (0: train on each image's own cluster)"
        )
    if config.image_size is None and height != width:
        raise ConfigError(f"images are {height}x{width}, not square: set image_size")
    size = effective_image_size(config, height)
    spec = ARCHS[config.arch]
    if size < spec.min_input_size:
        raise ConfigError(f"arch {config.arch} needs images of at least {spec.min_input_size} pixels, got {size}")
    if config.small_crops and config.small_crop_size(size) < spec.min_input_size:
        raise ConfigError(
            f"small crops of {config.small_crop_side} of {size} pixels are {config.small_crop_size(size)} pixels: "
            f"arch {config.arch} needs at least {spec.min_input_size}; raise small_crop_side"
        )
    if config.pca_dim is not None and (config.pca_dim > spec.feature_dim or config.pca_dim >= num_images):
        raise ConfigError(
            f"pca_dim={config.pca_dim} must be at most the feature dimension ({spec.feature_dim}) "
            f"and below the number of images ({num_images})"
        )
    return size


def build_model(config: Config, generator: torch.Generator) -> DeepClusterNet:
    """The run's convnet (with the projection where head=prototypes), initialised from `generator`."""
    proj_dim = config.proj_dim if config.head == "prototypes" else None
    return DeepClusterNet(config.arch, generator, proj_dim, config.intensity)


def initial_model(config: Config) -> DeepClusterNet:
    """The convnet before any training, drawn from the run's seed."""
    return build_model(config, stage_generator(config.seed, INIT_EPOCH, "init"))


def load_model(path: Path, config: Config, device: torch.device) -> tuple[DeepClusterNet, dict[str, Any]]:
    """The convnet with the weights of a checkpoint, on `device` (channels-last), and the checkpoint itself."""
    checkpoint = artifacts.load_checkpoint(path, device)
    model = build_model(config, torch.Generator()).to(device).to(memory_format=torch.channels_last)
    model.load_state_dict(checkpoint["model"])
    return model, checkpoint


def ingest(config: Config, layout: RunLayout) -> DatasetInfo:
    """Load and validate the dataset; start the run directory, or check an existing run matches.

    Every check runs before anything is written. An existing run must have the same config (but for
    EXTENDABLE_KEYS) and the same data, checked by fingerprint where the dataset's source is still there; where
    it has moved or gone, the run goes on with its own copy of the images.
    """
    if config.dataset not in DATASET_NAMES and not layout.images.is_file():  # runs from before the store kept images
        return _ingest_folder(config, layout)
    try:
        image_set = load_dataset(config)
    except (DatasetError, FileNotFoundError):
        if not (layout.exists() and layout.images.is_file()):
            raise
        image_set = stored_images(layout)  # the source has moved or gone: go on with the run's own copy
    image_size = validate_for_dataset(config, len(image_set), image_set.images.shape[-2:], image_set.source)
    info = DatasetInfo(len(image_set), image_size, image_set.labels is not None, image_set.fingerprint())

    def write_data() -> None:
        artifacts.save_array(layout.images, image_set.images)
        if image_set.labels is not None:
            artifacts.save_array(layout.labels, image_set.labels)

    record = {"source": image_set.source, "image_shape": list(image_set.images.shape[1:])}
    return _start_or_check(layout, config, info, layout.images, write_data, record)


def _start_or_check(
    layout: RunLayout,
    config: Config,
    info: DatasetInfo,
    data_file: Path,
    write_data: Callable[[], None],
    dataset_record: dict[str, Any],
) -> DatasetInfo:
    """Check an existing run against its config and data, or start it: its data (`write_data`, of which
    `data_file` is written first), the initial model, then run.json with `dataset_record` in its dataset entry.
    A run that fails to start (a full disk, say) leaves no directory behind."""
    if layout.exists():
        check_resumable(layout, config, info.fingerprint)
        if data_file.is_file():
            return info
    fresh = not layout.root.exists()
    try:
        layout.data_dir.mkdir(parents=True, exist_ok=True)
        write_data()
        initial = {"model": initial_model(config).state_dict(), "epoch": INIT_EPOCH}
        artifacts.save_checkpoint(layout.initial_model, initial)
        if not layout.exists():
            artifacts.write_json(layout.run_json, run_record(layout.run_id, config, dataset_record, info))
    except BaseException:
        if fresh:
            shutil.rmtree(layout.root, ignore_errors=True)
        raise
    return info


def _ingest_folder(config: Config, layout: RunLayout) -> DatasetInfo:
    """`ingest` for a folder of images, through the input store (`deepcluster.store`): the run's inputs.npy is
    the store's (a hard link where the file system allows, else a copy) or the selection `classes`/`limit` of it.
    Nothing of the run is written before every check has passed."""
    try:
        stored = store.ingest_folder(Path(config.dataset), config.image_size, ARCHS[config.arch].default_input_size)
    except DatasetError:
        if not (layout.exists() and layout.inputs.is_file()):
            raise
        record = artifacts.read_run_record(layout)["dataset"]  # the folder has moved or gone: the run's own inputs
        info = DatasetInfo(record["num_images"], record["input_size"], record["has_labels"], record["fingerprint"])
        check_resumable(layout, config, info.fingerprint)
        return info
    source = stored.source()
    keep, labels = stored.select(config.classes, config.limit)
    size = validate_for_dataset(config, len(keep), (stored.image_size, stored.image_size), source)
    everything = len(keep) == stored.num_images
    fingerprint = stored.fingerprint if everything else _digest(f"{stored.fingerprint} {config.classes} {config.limit}")
    info = DatasetInfo(len(keep), size, labels is not None, fingerprint)

    def write_data() -> None:
        if everything:
            artifacts.link_or_copy(stored.inputs, layout.inputs)
        else:
            artifacts.save_rows(layout.inputs, stored.inputs, keep)
        if labels is not None:
            artifacts.save_array(layout.labels, labels)
        files = pq.read_table(stored.files).take(pa.array(keep)).set_column(0, "index", pa.array(np.arange(len(keep))))
        with artifacts.atomic_open(layout.files) as handle:
            pq.write_table(files, handle)

    record = {"source": source, "image_shape": [1, size, size], "store": str(stored.root)}
    return _start_or_check(layout, config, info, layout.inputs, write_data, record)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# extendable keys whose changes run.json records under `changes`
TRAINING_CHANGES = frozenset({"lr", "nproc_per_node", "nnodes", "sync_batch_norm"})


def stored_images(layout: RunLayout) -> ImageSet:
    """The images (and labels) a run stored in its data directory when it started."""
    labels = artifacts.load_array(layout.labels) if layout.labels.is_file() else None
    source = artifacts.read_run_record(layout)["dataset"]["source"]
    return ImageSet(artifacts.load_array(layout.images), labels, f"{source} (as stored in run {layout.run_id})")


def check_resumable(layout: RunLayout, config: Config, fingerprint: str) -> None:
    """Refuse to continue a run whose config (but for EXTENDABLE_KEYS and where the data lies) or dataset changed."""
    record = artifacts.read_run_record(layout)
    recorded = recorded_config(record["config"])
    differing = config.differing_keys(recorded)
    if differing:
        details = ", ".join(f"{key}: {getattr(recorded, key)!r} -> {getattr(config, key)!r}" for key in differing)
        raise RunError(
            f"run {layout.run_id!r} exists with a different config ({details}); to continue it with its own "
            f"config use `deepcluster resume {layout.run_id} [--epochs N]`, or pick a new run_id"
        )
    recorded_fingerprint = record["dataset"]["fingerprint"]
    if recorded_fingerprint != fingerprint:
        raise RunError(
            f"run {layout.run_id!r} was trained on different data (fingerprint {recorded_fingerprint[:12]}…, "
            f"now {fingerprint[:12]}…); use a new run_id"
        )
    done = layout.completed_epochs()
    if config.epochs < len(done):
        raise RunError(
            f"run {layout.run_id!r} already has {len(done)} epochs; epochs={config.epochs} would not extend it"
        )
    updated = {key: value for key, value in config.to_json_dict().items() if key in EXTENDABLE_KEYS | LOCATION_KEYS}
    changed = {key: value for key, value in updated.items() if record["config"].get(key) != value}
    if changed:
        for key in sorted(changed.keys() & TRAINING_CHANGES):
            change = {"from_epoch": len(done), "key": key, "from": record["config"].get(key), "to": changed[key]}
            record.setdefault("changes", []).append(change)
        record["config"].update(changed)
        artifacts.write_json(layout.run_json, record)


def run_record(run_id: str, config: Config, dataset_record: dict[str, Any], info: DatasetInfo) -> dict[str, Any]:
    """The contents of run.json: config, dataset, library versions, device, creation time."""
    from importlib.metadata import PackageNotFoundError, version

    device = resolve_device(config.device)
    versions = {"python": platform.python_version(), "deepcluster": __version__}
    for package in ("torch", "torchvision", "numpy", "pyarrow", "scikit-learn", "prefect", "faiss-cpu"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return {
        "run_id": run_id,
        "config": config.to_json_dict(),
        "dataset": {
            "name": config.dataset,
            "fingerprint": info.fingerprint,
            "num_images": info.num_images,
            "input_size": info.image_size,
            "has_labels": info.has_labels,
            **dataset_record,
        },
        "versions": versions,
        "device": str(device),
        "precision": "bf16" if use_bf16(config, device) else "fp32",
        "host": platform.node(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def sobel_preprocess(layout: RunLayout, image_size: int) -> Path:
    """Grayscale + resize the ingested images for the Sobel front (data/inputs.npy), once per run."""
    if not layout.inputs.is_file():
        inputs = prepare_inputs(artifacts.load_array(layout.images, mmap=True), image_size)
        artifacts.save_array(layout.inputs, inputs)
    if not (layout.data_dir / artifacts.MANIFEST).is_file():
        artifacts.write_manifest(layout.data_dir)
    return layout.inputs


def load_inputs(config: Config) -> tuple[np.ndarray, np.ndarray | None]:
    """The network's inputs (uint8 N x 1 x S x S) and the labels, straight from the dataset (no run directory)."""
    image_set = load_dataset(config)
    size = validate_for_dataset(config, len(image_set), image_set.images.shape[-2:], image_set.source)
    return prepare_inputs(image_set.images, size), image_set.labels


def open_session(layout: RunLayout, config: Config, epoch: int, device: torch.device) -> Session:
    """The state that enters `epoch` of a run, read from its files (the checkpoint of epoch - 1)."""
    model, checkpoint = load_model(layout.model_before(epoch), config, device)
    optimizer = make_optimizer(model, config)
    if "optimizer" in checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
    labels = artifacts.load_array(layout.labels) if layout.labels.is_file() else None
    previous = artifacts.read_clusters(layout.assignments(epoch - 1)) if epoch > 0 else None
    inputs = open_inputs(layout.inputs, device, config.device_budget_gb)
    return Session(config, device, use_bf16(config, device), inputs, labels, model, optimizer, previous)


def new_session(config: Config, inputs: np.ndarray, labels: np.ndarray | None, device: torch.device) -> Session:
    """The state before epoch 0, with no run directory (the plain library loop)."""
    model = initial_model(config).to(device).to(memory_format=torch.channels_last)
    tensor = place_inputs(inputs, device, config.device_budget_gb)
    return Session(config, device, use_bf16(config, device), tensor, labels, model, make_optimizer(model, config))


def checkpoint(session: Session, epoch: int) -> dict[str, Any]:
    """A CPU copy of the convnet and optimizer state after `epoch`, safe to write while training goes on."""
    state = {"model": session.model.state_dict(), "optimizer": session.optimizer.state_dict(), "epoch": epoch}
    return _cpu_copy(state)


def _cpu_copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _cpu_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_cpu_copy(item) for item in value]
    return value


def write_features(layout: RunLayout, epoch: int, features: np.ndarray) -> None:
    artifacts.write_features(layout.staging_dir(epoch) / artifacts.FEATURES, features)


def write_assignments(layout: RunLayout, epoch: int, assignments: np.ndarray, labels: np.ndarray | None) -> None:
    artifacts.write_assignments(layout.staging_dir(epoch) / artifacts.ASSIGNMENTS, assignments, labels)


def write_clustering(layout: RunLayout, epoch: int, clustering: Clustering, pca: PCAWhitening | None) -> None:
    """What assigns an image to the epoch's clusters: head 0's centroids, and the PCA-whitening where it is on."""
    staging = layout.staging_dir(epoch)
    artifacts.save_array(staging / artifacts.CENTROIDS, clustering.assigned_to.cpu().numpy())
    if pca is not None:
        artifacts.save_array(staging / artifacts.PCA_MEAN, pca.mean.cpu().numpy())
        artifacts.save_array(staging / artifacts.PCA_PROJECTION, pca.projection.cpu().numpy())


def write_checkpoint(layout: RunLayout, epoch: int, state: dict[str, Any]) -> None:
    artifacts.save_checkpoint(layout.staging_dir(epoch) / artifacts.MODEL, state)


def finish_epoch(layout: RunLayout, epoch: int, epoch_metrics: dict[str, Any]) -> Path:
    """Write metrics.json and commit the epoch atomically (after its other files are written)."""
    artifacts.write_json(layout.staging_dir(epoch) / artifacts.METRICS, epoch_metrics)
    return artifacts.commit_epoch(layout, epoch)


class RunOutputs:
    """An epoch's outputs written into its run on a background writer, then the epoch committed (the flow's
    `outputs` of epoch.run_epoch). metrics.json also gets `stage_seconds["write"]`, the writer's time on the
    epoch's files, off the critical path."""

    def __init__(self, layout: RunLayout, writer: ArtifactWriter, labels: np.ndarray | None) -> None:
        self.layout, self.writer, self.labels = layout, writer, labels

    def begin(self, epoch: int) -> None:
        artifacts.begin_epoch(self.layout, epoch)

    def features(self, epoch: int, features: np.ndarray) -> None:
        self.writer.submit(epoch, write_features, self.layout, epoch, features)

    def clusters(self, epoch: int, assignments: np.ndarray, clustering: Clustering, pca: PCAWhitening | None) -> None:
        self.writer.submit(epoch, write_assignments, self.layout, epoch, assignments, self.labels)
        self.writer.submit(epoch, write_clustering, self.layout, epoch, clustering, pca)

    def checkpoint(self, epoch: int, state: dict[str, Any]) -> None:
        self.writer.submit(epoch, write_checkpoint, self.layout, epoch, state)

    def commit(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.writer.submit(epoch, self._commit, epoch, metrics)

    def _commit(self, epoch: int, epoch_metrics: dict[str, Any]) -> None:
        seconds = {**epoch_metrics["stage_seconds"], "write": self.writer.busy_seconds(epoch)}
        finish_epoch(self.layout, epoch, {**epoch_metrics, "stage_seconds": seconds})
