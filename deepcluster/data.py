"""Dataset loaders. Each returns an `ImageSet`: uint8 images (N, C, H, W) and optional labels.

Every loader checks its input and raises an error naming the file and what was wrong
(missing file, wrong IDX magic, truncated file, count mismatch, empty folder) before
any run directory is written.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepcluster.config import Config
from deepcluster.errors import DatasetError

logger = logging.getLogger(__name__)

PROJECT_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SYSTEM_DATA_DIR = Path("/usr/share/datasets")
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 (N, C, H, W), labels as int64 (N,) or None, and where they came from."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str
    paths: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def fingerprint(self) -> str:
        """sha256 of the image bytes and shape: identifies the data a run was trained on."""
        digest = hashlib.sha256(repr(self.images.shape).encode())
        digest.update(np.ascontiguousarray(self.images).data)
        return digest.hexdigest()


# ---------------------------------------------------------------- IDX (MNIST family)


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a uint8 array, checking magic and size."""
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise DatasetError(f"IDX file {path} cannot be read: {error}") from None
    if len(raw) < 4:
        raise DatasetError(f"IDX file {path} is truncated: {len(raw)} bytes, no header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DatasetError(f"IDX file {path} has magic 0x{magic:08x}, expected 0x{expected_magic:08x}")
    num_dims = magic & 0xFF
    header_size = 4 + 4 * num_dims
    if len(raw) < header_size:
        raise DatasetError(f"IDX file {path} is truncated inside its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(num_dims))
    expected_size = header_size + int(np.prod(shape))
    if len(raw) != expected_size:
        raise DatasetError(
            f"IDX file {path} is truncated or padded: {len(raw)} bytes, expected {expected_size} for shape {shape}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{stem}[.gz] not found in {directory}")


def load_idx_dataset(directory: Path, split: str, source: str) -> ImageSet:
    """Load `train-*` or `t10k-*` IDX images and labels from a directory."""
    prefix = "train" if split == "train" else "t10k"
    images_path = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    return ImageSet(images[:, None, :, :], labels.astype(np.int64), source)


def _idx_directory(name: str, config: Config) -> Path:
    """Where the IDX files of `name` are: the user's directory, else data/<name>/, else Debian's."""
    if config.data_dir is not None:
        if not config.data_dir.is_dir():
            raise FileNotFoundError(f"data directory {config.data_dir} does not exist")
        return config.data_dir
    candidates = [PROJECT_DATA_DIR / name, SYSTEM_DATA_DIR / name]
    for candidate in candidates:
        if any(candidate.glob("*-idx3-ubyte*")):
            return candidate
    if config.download:
        return download_idx(name, PROJECT_DATA_DIR / name)
    raise FileNotFoundError(
        f"no {name} IDX files found in {' or '.join(map(str, candidates))}: set data_dir to "
        f"their folder, install Debian's dataset-{name} package, or set download on a machine with internet"
    )


def download_idx(name: str, target: Path) -> Path:
    """Fetch the train and test IDX files with torchvision's downloader (needs internet) into `target`."""
    import torchvision.datasets

    dataset_class = {"fashion-mnist": torchvision.datasets.FashionMNIST, "mnist": torchvision.datasets.MNIST}[name]
    staging = target / ".download"
    for train in (True, False):
        dataset_class(str(staging), train=train, download=True)
    for path in staging.rglob("*-ubyte*"):  # torchvision keeps them in <root>/<ClassName>/raw/
        path.replace(target / path.name)
    shutil.rmtree(staging)
    return target


# ---------------------------------------------------------------- CIFAR-10


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only what CIFAR-10's python batches contain: numpy arrays, dicts, lists, bytes (which pickle
    protocols 0-2 written by Python 3 store as calls of _codecs.encode on a string)."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> type:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not a type a CIFAR-10 batch contains")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch {path} does not exist")
    try:
        with path.open("rb") as handle:
            batch = _RestrictedUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise DatasetError(f"CIFAR-10 batch {path} cannot be read: {error}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"CIFAR-10 batch {path} lacks the 'data' and 'labels' entries")
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as error:
        raise DatasetError(f"CIFAR-10 batch {path} holds data or labels that are not numbers: {error}") from None
    if labels.ndim != 1:
        raise DatasetError(f"CIFAR-10 batch {path} has labels of shape {labels.shape}, expected a list")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"CIFAR-10 batch {path} has data of shape {data.shape}, expected (N, 3072)")
    if len(data) != len(labels):
        raise DatasetError(f"CIFAR-10 batch {path} holds {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(config: Config) -> ImageSet:
    candidates = (
        [config.data_dir]
        if config.data_dir is not None
        else [PROJECT_DATA_DIR / "cifar10", PROJECT_DATA_DIR / "cifar-10-batches-py"]
    )
    for directory in candidates:
        for root in (directory, directory / "cifar-10-batches-py"):
            if (root / "test_batch").is_file():
                names = [f"data_batch_{i}" for i in range(1, 6)] if config.split == "train" else ["test_batch"]
                parts = [_read_cifar_batch(root / name) for name in names]
                images = np.concatenate([images for images, _ in parts])
                labels = np.concatenate([labels for _, labels in parts])
                return ImageSet(images, labels, f"cifar10:{root}")
    raise FileNotFoundError(
        f"no CIFAR-10 python batches (test_batch, data_batch_1..5) found in {' or '.join(map(str, candidates))}"
    )


# ---------------------------------------------------------------- folders of images


def read_image(path: Path) -> np.ndarray:
    """One image file as uint8 (H, W) where it is grayscale, else (H, W, 3); OSError or ValueError where it
    cannot be decoded."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB") if image.mode != "L" else image)


def load_image_folder(directory: Path) -> ImageSet:
    """Every readable image below `directory`, in memory (a run reads large folders through the input store,
    `deepcluster.store`); labels from first-level sub-folder names where all have one."""
    files = sorted(path for path in directory.rglob("*") if path.is_file() and not path.name.startswith("."))
    if not files:
        raise DatasetError(f"image folder {directory} is empty")
    arrays, kept, unreadable = [], [], []
    for path in files:
        try:
            arrays.append(read_image(path))
            kept.append(path)
        except (OSError, ValueError) as error:
            unreadable.append(f"{path.relative_to(directory)} ({error.__class__.__name__})")
    if unreadable:
        logger.warning("skipped %d unreadable files in %s: %s", len(unreadable), directory, ", ".join(unreadable[:10]))
    if not arrays:
        raise DatasetError(f"image folder {directory} has no readable images ({len(unreadable)} unreadable files)")
    sizes = {array.shape[:2] for array in arrays}
    if len(sizes) > 1:
        raise DatasetError(
            f"images in {directory} have {len(sizes)} different sizes (e.g. {sorted(sizes)[:3]}): "
            "resize them to one size first"
        )
    channels = 3 if any(array.ndim == 3 for array in arrays) else 1
    images = np.stack([_to_channels(array, channels) for array in arrays])
    relative = [path.relative_to(directory) for path in kept]
    labels = None
    if all(len(path.parts) >= 2 for path in relative):
        class_names = sorted({path.parts[0] for path in relative})
        labels = np.array([class_names.index(path.parts[0]) for path in relative], dtype=np.int64)
    source = f"folder:{directory} ({len(kept)} images, {len(unreadable)} unreadable skipped)"
    return ImageSet(images, labels, source, tuple(str(path) for path in relative))


def _to_channels(array: np.ndarray, channels: int) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
        if channels == 3:
            array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


# ---------------------------------------------------------------- digits


def load_digits() -> ImageSet:
    """scikit-learn's bundled 8x8 digits, values 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    return ImageSet(images, bunch.target.astype(np.int64), "sklearn:digits")


# ---------------------------------------------------------------- entry point


def load_dataset(config: Config) -> ImageSet:
    """Load the configured dataset, then apply the class filter and the limit."""
    name = config.dataset
    if name == "fashion-mnist-sample":
        if config.split != "train":
            raise DatasetError("the embedded fashion-mnist-sample has only a train split")
        image_set = load_idx_dataset(PROJECT_DATA_DIR / "fashion-mnist-sample", "train", name)
    elif name in ("fashion-mnist", "mnist"):
        directory = _idx_directory(name, config)
        image_set = load_idx_dataset(directory, config.split, f"{name}:{directory}")
    elif name == "cifar10":
        image_set = load_cifar10(config)
    elif name == "digits":
        image_set = load_digits()
    else:
        image_set = load_image_folder(Path(name))
    return select(image_set, config.classes, config.limit)


def select(image_set: ImageSet, classes: tuple[int, ...] | None, limit: int | None) -> ImageSet:
    """Keep the images of `classes` (in dataset order), then the first `limit` of them."""
    keep = selection(len(image_set), image_set.labels, classes, limit, image_set.source)
    return ImageSet(
        images=np.ascontiguousarray(image_set.images[keep]),
        labels=None if image_set.labels is None else image_set.labels[keep],
        source=image_set.source,
        paths=None if image_set.paths is None else tuple(image_set.paths[i] for i in keep),
    )


def selection(
    count: int, labels: np.ndarray | None, classes: tuple[int, ...] | None, limit: int | None, source: str
) -> np.ndarray:
    """Indices of the `count` images to keep: those of `classes` (in dataset order), then the first `limit`."""
    keep = np.arange(count)
    if classes is not None:
        if labels is None:
            raise DatasetError(f"classes needs labels, but {source} has none")
        present = set(np.unique(labels).tolist())
        missing = [label for label in classes if label not in present]
        if missing:
            raise DatasetError(f"classes {missing} do not occur in {source} (labels: {sorted(present)})")
        keep = keep[np.isin(labels, classes)]
    if limit is not None:
        keep = keep[:limit]
    return keep
