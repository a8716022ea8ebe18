"""The one configuration object of a run: every knob, validated, with measured defaults.

The optimiser follows Caron et al. 2018, Sec. 4 ("Implementation details"): SGD with momentum 0.9, learning
rate 0.05 for a batch of 256, weight decay 1e-5, but in batches of 128 (at half the rate, so the same per
image), which measured better on the suite below. The clustering defaults are those that measured best on the
development suite of six labelled sets (`deepcluster bench-quality --suite dev`, docs/RESULTS.md):
DeepCluster-v2's prototype head (an L2-normalised projection is clustered, no PCA, and the top layer is the
k-means centroids), two augmented views of every image per step (crops of 60-100% of the area at aspect ratios
1/2-2, rotations, flips, brightness and contrast jitter), k-means seeded from the previous epoch's clusters,
at least 5,000 images an epoch, and the final grouping by spectral clustering of the convolutional features'
shared-nearest-neighbour graph, where no group is smaller than a tenth of an even share, after SCAN's
self-labelling (6 passes). The paper's own set-up is `head="linear", pca_dim=256, crop_scale=(0.5, 1),
crop_ratio=(3/4, 4/3), rotation=0, kmeans_init="random", views=1, min_epoch_samples=0, batch_size=256,
self_label=0, jitter=0`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from deepcluster.errors import ConfigError

DATASET_NAMES = ("fashion-mnist-sample", "fashion-mnist", "mnist", "cifar10", "digits")
# The training crops' aspect ratios by default: wider than torchvision's RandomResizedCrop (3/4-4/3), which
# measured better on the dev and check suites together (docs/RESULTS.md, `ratio-2`).
ASPECT_RATIO_RANGE = (1 / 2, 2.0)

GroupingMethod = Literal["kmeans", "spectral", "snn", "snn-kmeans", "snn-sized", "leiden"]

# Keys that may change when an existing run is continued, because they do not change what it has trained:
# asking for more epochs extends the run, the final grouping (self-labelling included) is computed from what was
# trained and leaves it as it was, where the inputs are held changes no result, and the epochs to come may be
# trained by any number of processes. The learning rate may change for the epochs to come (how a run goes on
# after it diverged); run.json records each such change with the epoch it applies from.
RANK_KEYS = frozenset({"nproc_per_node", "nnodes", "master_addr", "master_port", "sync_batch_norm"})
EXTENDABLE_KEYS = frozenset({"epochs", "grouping", "groups", "self_label", "lr", "device_budget_gb"}) | RANK_KEYS
# Keys that say where the dataset's files are, not what the data is (the dataset fingerprint checks
# that): a run continued from elsewhere records the new values.
LOCATION_KEYS = frozenset({"data_dir", "download"})


class Config(BaseModel):
    """Every knob of a DeepCluster run. Immutable once built."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Data
    dataset: str = Field("fashion-mnist-sample", description="dataset name or path to a folder of images")
    data_dir: Path | None = Field(None, description="directory holding the dataset's files")
    split: Literal["train", "test"] = Field("train", description="dataset split (datasets that have one)")
    classes: tuple[int, ...] | None = Field(None, description="keep only these labels")
    limit: int | None = Field(None, ge=1, description="keep only the first N images")
    download: bool = Field(False, description="download with torchvision where the machine has internet")
    image_size: int | None = Field(
        None, ge=8, description="resize images to this side; default: native, enlarged to the arch's default input size"
    )

    # Algorithm
    epochs: int = Field(10, ge=1, description="epochs to train (a run can be extended later)")
    num_clusters: int = Field(30, ge=2, description="k of k-means (pseudo-classes)")
    num_heads: int = Field(1, ge=1, description="k-means clusterings (each with its own seed) trained at once")
    extra_clusters: tuple[int, ...] = Field(
        (), description="k of further k-means clusterings trained at once, one head each (several granularities)"
    )
    neighbours: int = Field(
        10,
        ge=0,
        description="train on each cluster's share among an image and its nearest neighbours (soft targets); "
        "0: on the image's own cluster alone",
    )
    neighbour_features: Literal["clustered", "representation"] = Field(
        "clustered",
        description="where those neighbours are found: among the features k-means clusters, or in the convolutional "
        "representation (what kNN and the final grouping use; taken in the same pass as the features, it holds "
        "2,048 floats an image in memory on the small convnet, where the clustered features take 128)",
    )
    arch: Literal["small", "alexnet", "vgg16"] = Field("small", description="convnet architecture")
    head: Literal["linear", "prototypes"] = Field(
        "prototypes",
        description="linear: the paper's top layer, re-initialised at random each epoch; prototypes: "
        "DeepCluster-v2, a projection whose L2-normalised output is clustered, the top layer set to the centroids",
    )
    proj_dim: int = Field(128, ge=2, description="output dimension of the projection (head=prototypes)")
    temperature: float = Field(0.1, gt=0, description="softmax temperature of the prototype logits (head=prototypes)")
    pca_dim: int | None = Field(
        None,
        ge=2,
        description="PCA-whitening output dimension (paper: 256); null (none on the command line): no PCA, L2 only",
    )
    kmeans_iters: int = Field(20, ge=1, description="at most this many k-means iterations (stops at convergence)")
    kmeans_backend: Literal["torch", "faiss"] = Field(
        "torch", description="k-means implementation (faiss: optional package)"
    )
    kmeans_init: Literal["random", "k-means++", "previous"] = Field(
        "previous",
        description="k-means seeding: k random points (paper), greedy k-means++, or previous: the previous "
        "epoch's clusters' means in the new features (head 0; k-means++ at epoch 0 and for other heads)",
    )
    assignment: Literal["kmeans", "balanced"] = Field(
        "kmeans",
        description="pseudo-labels: each image's k-means cluster, or balanced: SeLa's equal shares, each image "
        "reassigned to the k-means centroids by Sinkhorn-Knopp so that every cluster takes N/k images",
    )

    grouping: GroupingMethod = Field(
        "snn-sized",
        description="final grouping of the learned convolutional features into the groups a user asks for: k-means, "
        "spectral clustering of their nearest-neighbour graph, snn: of that graph weighted by shared neighbours, "
        "snn-kmeans: the same with its spectral embedding divided by k-means, snn-sized: snn-kmeans where a group "
        "below a tenth of an even share is set aside and the rest grouped again, or leiden: that weighted graph's "
        "communities of highest modularity",
    )
    groups: int | None = Field(
        None, ge=2, description="at the end of a run, group its images into this many groups (RUN/groups/)"
    )
    self_label: int = Field(
        6,
        ge=0,
        description="before the final grouping, SCAN's self-labelling: a copy of the convnet trained for this many "
        "passes to predict the groups of the images of which at least 18 of the 20 nearest neighbours share their "
        "group, then the images grouped again with it; 0: off",
    )

    # Optimisation (paper Sec. 4)
    batch_size: int = Field(128, ge=1, description="images per batch (paper: 256); the learning rate scales with it")
    lr: float = Field(0.05, gt=0, description="learning rate for a batch of 256; scaled linearly with batch_size")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(1e-5, ge=0, description="SGD weight decay")
    warmup_epochs: int = Field(0, ge=0, description="epochs of linear learning-rate warm-up from 0")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="after warm-up: constant, or cosine decay to 0 at the last epoch"
    )
    views: int = Field(
        2, ge=1, le=8, description="augmented views of every sampled image per step, each trained on its pseudo-label"
    )
    instance_weight: float = Field(
        0.0,
        ge=0,
        description="weight of an instance-discrimination loss between the first two views (needs views >= 2)",
    )
    instance_temperature: float = Field(0.2, gt=0, description="temperature of the instance-discrimination loss")
    min_epoch_samples: int = Field(
        5000, ge=0, description="images drawn per epoch: the dataset's size, but at least this many"
    )
    max_epoch_samples: int | None = Field(
        None,
        ge=1,
        description="images drawn per epoch (and per pass of self-labelling) at most, even below min_epoch_samples "
        "(null: no limit): for large collections",
    )
    intensity: bool = Field(
        False, description="the network sees the grayscale itself beside its Sobel gradients (paper: gradients only)"
    )
    crop_scale: tuple[float, float] = Field((0.6, 1.0), description="random resized crop area range")
    crop_ratio: tuple[float, float] = Field(
        ASPECT_RATIO_RANGE,
        description="random resized crop aspect ratio (width / height) range, uniform in its logarithm",
    )
    small_crops: int = Field(
        0,
        ge=0,
        le=8,
        description="low-resolution crops of every sampled image per step besides the views, each trained on its "
        "pseudo-label (DeepCluster-v2's multi-crop); 0: off",
    )
    small_crop_scale: tuple[float, float] = Field(
        (0.2, 0.6), description="random resized crop area range of the small crops"
    )
    small_crop_side: float = Field(0.5, gt=0, lt=1, description="side of the small crops, as a fraction of the input's")
    rotation: float = Field(15.0, ge=0, le=180, description="random rotation of training crops, up to +-degrees")
    erase: float = Field(0.0, ge=0, le=1, description="chance that a training crop has a random rectangle blacked out")
    jitter: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="brightness and contrast of each training crop scaled by factors drawn from 1 +- jitter",
    )
    flip: bool = Field(True, description="random mirroring of training crops")

    # Execution
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda where available, else cpu")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="bf16 autocast for the convnet; auto: bf16 where the device has fast bf16 units"
    )
    device_budget_gb: float = Field(
        8.0,
        ge=0,
        description="inputs up to this size (GiB) are held in the device's memory; larger ones are read from the "
        "run's input file a batch at a time (same results)",
    )
    nproc_per_node: int = Field(
        1,
        ge=1,
        description="processes training the run on this machine (torch.distributed ranks, started by torchrun): "
        "one per GPU on cuda; 1: the run trains in the flow's own process",
    )
    nnodes: int = Field(1, ge=1, description="machines training the run together, nproc_per_node ranks each")
    sync_batch_norm: bool = Field(
        False,
        description="with several ranks, batch norm takes its statistics over the whole batch of all ranks (as "
        "SyncBatchNorm; slower on the CPU) instead of over each rank's part",
    )
    master_addr: str = Field(
        "127.0.0.1", min_length=1, description="address of this machine as the others reach it (nnodes > 1)"
    )
    master_port: int = Field(29500, ge=1, le=65535, description="port on master_addr where the ranks meet (nnodes > 1)")
    seed: int = Field(0, ge=0, description="the run's seed: every random draw derives from it")
    deterministic: bool = Field(True, description="torch deterministic algorithms (exact resume on CPU)")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str, info: ValidationInfo) -> str:
        if value in DATASET_NAMES or Path(value).is_dir() or (info.context or {}).get("recorded"):
            # a run's recorded folder may have moved or gone since: the run keeps its own copy of the images
            return value
        if Path(value).exists():
            raise ValueError(f"dataset path {value!r} is not a directory (expected a folder of images)")
        raise ValueError(
            f"unknown dataset {value!r}: expected one of {', '.join(DATASET_NAMES)} or a path to a folder of images"
        )

    @field_validator("classes")
    @classmethod
    def _valid_classes(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("classes must name at least one class")
        if any(label < 0 for label in value):
            raise ValueError(f"classes must be non-negative, got {list(value)}")
        if len(set(value)) != len(value):
            raise ValueError(f"classes contain duplicates: {list(value)}")
        return tuple(sorted(value))

    @field_validator("extra_clusters")
    @classmethod
    def _valid_extra_clusters(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(num_clusters < 2 for num_clusters in value):
            raise ValueError(f"every k in extra_clusters must be at least 2, got {list(value)}")
        return value

    @field_validator("crop_scale", "small_crop_scale")
    @classmethod
    def _valid_crop_scale(cls, value: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high <= 1:
            raise ValueError(f"{info.field_name} must satisfy 0 < low <= high <= 1, got {value}")
        return value

    @field_validator("crop_ratio")
    @classmethod
    def _valid_crop_ratio(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {value}")
        return value

    @model_validator(mode="after")
    def _prototypes_cluster_the_embedding(self) -> Config:
        if self.head == "prototypes" and self.pca_dim is not None:
            raise ValueError(
                "head=prototypes clusters the L2-normalised projection itself (its centroids become the top "
                "layer), so pca_dim must be null"
            )
        return self

    @model_validator(mode="after")
    def _instance_needs_two_views(self) -> Config:
        if self.instance_weight > 0 and self.views < 2:
            raise ValueError(
                f"instance_weight > 0 compares two views of each image, so views must be >= 2, got {self.views}"
            )
        return self

    def small_crop_size(self, input_size: int) -> int:
        """The side in pixels of the small crops of images `input_size` pixels wide."""
        return round(input_size * self.small_crop_side)

    @property
    def ranks(self) -> int:
        """The number of processes training the run: nproc_per_node on each of nnodes machines."""
        return self.nproc_per_node * self.nnodes

    def differing_keys(self, other: Config) -> list[str]:
        """Keys whose values differ between two configs, ignoring extendable and location ones."""
        mine, theirs = self.to_json_dict(), other.to_json_dict()
        ignored = EXTENDABLE_KEYS | LOCATION_KEYS
        return sorted(key for key in mine if key not in ignored and mine[key] != theirs[key])

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def build_config(values: dict[str, Any], recorded: bool = False) -> Config:
    """Validate user-supplied values into a Config, turning pydantic's errors into one ConfigError.

    recorded: the values are a run's recorded config, whose dataset folder need not exist any more."""
    try:
        return Config.model_validate(values, context={"recorded": recorded})
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or 'config'}: {issue['msg']}" for issue in error.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


# Keys added to Config after runs were already being recorded, each with the value that reproduces how
# such a run trained, so that an older run.json still resumes and evaluates as it was trained.
PREDATED_KEYS: dict[str, Any] = {
    "num_heads": 1,
    "head": "linear",
    "kmeans_init": "random",
    "warmup_epochs": 0,
    "lr_schedule": "constant",
    "rotation": 0.0,
    "extra_clusters": [],
    "neighbours": 0,
    "grouping": "kmeans",
    "views": 1,
    "instance_weight": 0.0,
    "min_epoch_samples": 0,
    "max_epoch_samples": None,
    "small_crops": 0,
    "intensity": False,
    "assignment": "kmeans",
    "neighbour_features": "clustered",
    "erase": 0.0,
    "jitter": 0.0,
    "crop_ratio": [3 / 4, 4 / 3],
    "self_label": 0,
}


def recorded_config(values: dict[str, Any]) -> Config:
    """The config of an existing run from its run.json, keys the run predates filled as it trained."""
    return build_config({**PREDATED_KEYS, **values}, recorded=True)


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a JSON config file (keys as in `Config`)."""
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"config file {path} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a JSON object, got {type(values).__name__}")
    return values
