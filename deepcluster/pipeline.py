"""The stages of a DeepCluster run as functions over the run directory.

Each stage reads its inputs from files and writes its outputs to files, returning paths and
small values, so the Prefect tasks wrapping them never carry big arrays or models. The algorithm
itself lives in the modules these functions call (features, reduce, kmeans, sampling, train, metrics).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from deepcluster import __version__, artifacts, metrics
from deepcluster.artifacts import RunError, RunLayout
from deepcluster.config import Config, ConfigError
from deepcluster.data import ImageSet, load_dataset
from deepcluster.features import extract_features
from deepcluster.kmeans import faiss_kmeans, kmeans
from deepcluster.models import ARCHS, ClusterHead, DeepClusterNet
from deepcluster.reduce import pca_whiten_l2
from deepcluster.rng import INIT_EPOCH, stage_generator, stage_seed
from deepcluster.sampling import uniform_cluster_sample
from deepcluster.sobel import prepare_inputs
from deepcluster.train import TrainResult, make_optimizer, train_epoch

SCRATCH_FILES = ("raw_features.npy", "sample.npy")


@dataclass(frozen=True)
class DatasetInfo:
    """What later stages need to know of the ingested dataset (small, passed between tasks)."""

    num_images: int
    image_size: int
    has_labels: bool
    fingerprint: str


# ---------------------------------------------------------------- set-up


def resolve_device(requested: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA GPU is available (use --device cpu or auto)")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def configure_torch(config: Config) -> None:
    """Deterministic kernels when asked (exact resume on CPU); intra-op threads = cores."""
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(config.deterministic, warn_only=True)
    torch.set_num_threads(len(os.sched_getaffinity(0)))


def effective_image_size(config: Config, native_size: int) -> int:
    """The configured size, else the native one raised to the architecture's minimum."""
    return config.image_size or max(native_size, ARCHS[config.arch].min_input_size)


def validate_for_dataset(config: Config, image_set: ImageSet) -> int:
    """Check the config against the data; returns the image side the network will see."""
    num_images = len(image_set)
    height, width = image_set.images.shape[-2:]
    if num_images == 0:
        raise ConfigError(f"dataset {image_set.source} has no images after the class filter and limit")
    if config.num_clusters > num_images:
        raise ConfigError(f"k={config.num_clusters} is larger than the number of images ({num_images})")
    if config.image_size is None and height != width:
        raise ConfigError(f"images are {height}x{width}, not square: pass --image-size")
    size = effective_image_size(config, height)
    spec = ARCHS[config.arch]
    if size < spec.min_input_size:
        raise ConfigError(f"arch {config.arch} needs images of at least {spec.min_input_size} pixels, got {size}")
    if config.pca_dim > spec.feature_dim or config.pca_dim >= num_images:
        raise ConfigError(
            f"pca_dim={config.pca_dim} must be at most the feature dimension ({spec.feature_dim}) "
            f"and below the number of images ({num_images})"
        )
    return size


def initial_model(config: Config) -> DeepClusterNet:
    """The convnet before any training, drawn from the run's seed."""
    return DeepClusterNet(config.arch, stage_generator(config.seed, INIT_EPOCH, "init"))


def load_model(path: Path, config: Config, device: torch.device) -> tuple[DeepClusterNet, dict[str, Any]]:
    """The convnet with the weights of a checkpoint, on `device`, and the checkpoint itself."""
    checkpoint = artifacts.load_checkpoint(path, device)
    model = DeepClusterNet(config.arch, torch.Generator()).to(device)
    model.load_state_dict(checkpoint["model"])
    return model, checkpoint


# ---------------------------------------------------------------- stages


def ingest(config: Config, layout: RunLayout) -> DatasetInfo:
    """Load and validate the dataset; start the run directory, or check an existing run matches.

    Every check runs before anything is written. An existing run must have the same config
    (but for `epochs`) and the same dataset fingerprint.
    """
    image_set = load_dataset(config)
    image_size = validate_for_dataset(config, image_set)
    info = DatasetInfo(len(image_set), image_size, image_set.labels is not None, image_set.fingerprint())
    if layout.exists():
        check_resumable(layout, config, info.fingerprint)
        if layout.images.is_file():
            return info
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    artifacts.save_array(layout.images, image_set.images)
    if image_set.labels is not None:
        artifacts.save_array(layout.labels, image_set.labels)
    artifacts.save_checkpoint(layout.initial_model, {"model": initial_model(config).state_dict(), "epoch": INIT_EPOCH})
    if not layout.exists():
        artifacts.write_json(layout.run_json, run_record(layout.run_id, config, image_set, info))
    return info


def check_resumable(layout: RunLayout, config: Config, fingerprint: str) -> None:
    """Refuse to continue a run whose config (but for `epochs`) or dataset changed."""
    record = artifacts.read_json(layout.run_json)
    recorded = Config.model_validate(record["config"])
    differing = config.differing_keys(recorded)
    if differing:
        details = ", ".join(f"{key}: {getattr(recorded, key)!r} -> {getattr(config, key)!r}" for key in differing)
        raise RunError(
            f"run {layout.run_id!r} exists with a different config ({details}); to continue it with its own "
            f"config use `deepcluster resume {layout.run_id} [--epochs N]`, or pick a new --run-id"
        )
    recorded_fingerprint = record["dataset"]["fingerprint"]
    if recorded_fingerprint != fingerprint:
        raise RunError(
            f"run {layout.run_id!r} was trained on different data (fingerprint {recorded_fingerprint[:12]}…, "
            f"now {fingerprint[:12]}…); use a new --run-id"
        )
    done = layout.completed_epochs()
    if config.epochs < len(done):
        raise RunError(
            f"run {layout.run_id!r} already has {len(done)} epochs; epochs={config.epochs} would not extend it"
        )
    if config.epochs != recorded.epochs:
        record["config"]["epochs"] = config.epochs
        artifacts.write_json(layout.run_json, record)


def run_record(run_id: str, config: Config, image_set: ImageSet, info: DatasetInfo) -> dict[str, Any]:
    """The contents of run.json: config, dataset, library versions, device, creation time."""
    from importlib.metadata import PackageNotFoundError, version

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
            "source": image_set.source,
            "fingerprint": info.fingerprint,
            "num_images": info.num_images,
            "image_shape": list(image_set.images.shape[1:]),
            "input_size": info.image_size,
            "has_labels": info.has_labels,
        },
        "versions": versions,
        "device": str(resolve_device(config.device)),
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


def extract(layout: RunLayout, config: Config, epoch: int, device: torch.device, progress: bool | None = None) -> Path:
    """Features of every image with the weights that enter `epoch`; written as scratch raw_features.npy."""
    model, _ = load_model(layout.model_before(epoch), config, device)
    inputs = artifacts.load_array(layout.inputs, mmap=True)
    features = extract_features(model, inputs, config.batch_size, device, progress)
    path = artifacts.begin_epoch(layout, epoch) / "raw_features.npy"
    artifacts.save_array(path, features.cpu().numpy())
    return path


def reduce(raw_features: Path, pca_dim: int, device: torch.device) -> Path:
    """PCA-whiten + L2-normalise the raw features -> features.parquet beside them."""
    features = torch.from_numpy(artifacts.load_array(raw_features)).to(device)
    reduced, _ = pca_whiten_l2(features, pca_dim)
    path = raw_features.with_name("features.parquet")
    artifacts.write_features(path, reduced.cpu().numpy())
    return path


def cluster(
    features_path: Path, layout: RunLayout, config: Config, epoch: int, device: torch.device
) -> tuple[Path, float]:
    """k-means on the reduced features -> assignments.parquet (with labels where known); returns its k-means loss."""
    points = torch.from_numpy(artifacts.read_features(features_path)).to(device)
    if config.kmeans_backend == "faiss":
        result = faiss_kmeans(
            points, config.num_clusters, stage_seed(config.seed, epoch, "kmeans"), config.kmeans_iters
        )
    else:
        generator = stage_generator(config.seed, epoch, "kmeans")
        result = kmeans(points, config.num_clusters, generator, config.kmeans_iters)
    labels = artifacts.load_array(layout.labels) if layout.labels.is_file() else None
    path = features_path.with_name("assignments.parquet")
    artifacts.write_assignments(path, result.assignments.cpu().numpy(), labels)
    return path, result.loss


def resample(assignments_path: Path, config: Config, epoch: int) -> Path:
    """Indices of the epoch's training images, uniform over clusters -> scratch sample.npy."""
    clusters = torch.from_numpy(artifacts.read_clusters(assignments_path))
    sample = uniform_cluster_sample(clusters, config.num_clusters, stage_generator(config.seed, epoch, "sample"))
    path = assignments_path.with_name("sample.npy")
    artifacts.save_array(path, sample.numpy())
    return path


def retrain(
    layout: RunLayout,
    config: Config,
    epoch: int,
    assignments_path: Path,
    sample_path: Path,
    device: torch.device,
    progress: bool | None = None,
) -> TrainResult:
    """Re-initialise the top layer, train convnet + top layer one epoch on the pseudo-labels -> model.pt."""
    model, checkpoint = load_model(layout.model_before(epoch), config, device)
    optimizer = make_optimizer(model, config)
    if "optimizer" in checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
    head = ClusterHead(model.feature_dim, config.num_clusters)
    head.reset_parameters(stage_generator(config.seed, epoch, "head"))
    head.to(device)
    pseudo_labels = torch.from_numpy(artifacts.read_clusters(assignments_path))
    sample = torch.from_numpy(artifacts.load_array(sample_path))
    inputs = artifacts.load_array(layout.inputs, mmap=True)
    augment_generator = stage_generator(config.seed, epoch, "augment", device)
    # Dropout draws from torch's global generator: fork it, seeded per (run, epoch), so the
    # global state outside is untouched and a re-run epoch draws the same masks.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(stage_seed(config.seed, epoch, "dropout"))
        result = train_epoch(model, head, optimizer, inputs, pseudo_labels, sample, config, augment_generator, progress)
        global_rng = torch.get_rng_state()
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": {"torch_in_epoch": global_rng, "augment": augment_generator.get_state()},
        "epoch": epoch,
    }
    artifacts.save_checkpoint(assignments_path.with_name("model.pt"), checkpoint)
    return result


def evaluate(layout: RunLayout, epoch: int, assignments_path: Path, num_clusters: int) -> dict[str, Any]:
    """NMI against the previous epoch's assignments; NMI/ACC/ARI against labels when present; cluster sizes."""
    clusters = artifacts.read_clusters(assignments_path)
    result: dict[str, Any] = {"cluster_sizes": metrics.cluster_size_stats(clusters, num_clusters)}
    previous = layout.epoch_dir(epoch - 1) / "assignments.parquet"
    result["nmi_previous"] = metrics.nmi(clusters, artifacts.read_clusters(previous)) if epoch > 0 else None
    if layout.labels.is_file():
        labels = artifacts.load_array(layout.labels)
        result["labels"] = {
            "nmi": metrics.nmi(labels, clusters),
            "acc": metrics.accuracy(labels, clusters),
            "ari": metrics.ari(labels, clusters),
        }
    return result


def finish_epoch(layout: RunLayout, epoch: int, epoch_metrics: dict[str, Any]) -> Path:
    """Write metrics.json, drop scratch files, and commit the epoch atomically."""
    staging = layout.staging_dir(epoch)
    for name in SCRATCH_FILES:
        (staging / name).unlink(missing_ok=True)
    artifacts.write_json(staging / "metrics.json", epoch_metrics)
    return artifacts.commit_epoch(layout, epoch)
