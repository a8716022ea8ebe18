import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepcluster.config import Config
from deepcluster.data import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    DatasetError,
    load_cifar10,
    load_dataset,
    load_idx_dataset,
    load_image_folder,
    read_idx,
)
from tests.helpers import write_idx


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 255, (6, 28, 28), dtype=np.uint8), IDX_IMAGES_MAGIC)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 2, 0, 1, 2], np.uint8), IDX_LABELS_MAGIC, True)
    return tmp_path


def test_idx_roundtrip_plain_and_gzipped(idx_dir: Path):
    image_set = load_idx_dataset(idx_dir, "train", "test")
    assert image_set.images.shape == (6, 1, 28, 28)
    assert image_set.labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_idx_wrong_magic_names_file(idx_dir: Path):
    path = idx_dir / "train-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x01" + path.read_bytes()[4:])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte has magic 0x00000801, expected 0x00000803"):
        load_idx_dataset(idx_dir, "train", "test")


def test_idx_truncated_names_file(idx_dir: Path):
    path = idx_dir / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte is truncated"):
        load_idx_dataset(idx_dir, "train", "test")
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DatasetError, match="no header"):
        read_idx(path, IDX_IMAGES_MAGIC)


def test_idx_corrupt_gzip(idx_dir: Path):
    path = idx_dir / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:15])
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz cannot be read"):
        load_idx_dataset(idx_dir, "train", "test")


def test_idx_count_mismatch(idx_dir: Path):
    write_idx(idx_dir / "train-labels-idx1-ubyte", np.zeros(5, np.uint8), IDX_LABELS_MAGIC)
    (idx_dir / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="holds 6 images but .* holds 5 labels"):
        load_idx_dataset(idx_dir, "train", "test")


def test_idx_missing_file(idx_dir: Path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_idx_dataset(idx_dir, "test", "test")


def test_fashion_mnist_from_user_dir_with_filter_and_limit(idx_dir: Path):
    config = Config(dataset="fashion-mnist", data_dir=idx_dir, classes=(1, 2), limit=3)
    image_set = load_dataset(config)
    assert image_set.labels.tolist() == [1, 2, 1]


def test_missing_class_is_an_error(idx_dir: Path):
    with pytest.raises(DatasetError, match=r"classes \[7\] do not occur"):
        load_dataset(Config(dataset="fashion-mnist", data_dir=idx_dir, classes=(1, 7)))


def test_embedded_sample():
    image_set = load_dataset(Config())
    assert image_set.images.shape == (5000, 1, 28, 28)
    assert np.bincount(image_set.labels).tolist() == [1613, 1718, 1669]
    assert len(image_set.fingerprint()) == 64


def test_digits():
    image_set = load_dataset(Config(dataset="digits", limit=50))
    assert image_set.images.shape == (50, 1, 8, 8) and image_set.images.max() == 255


def _cifar_batch(path: Path, count: int, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    rng = np.random.default_rng(count)
    batch = {b"data": rng.integers(0, 255, (count, 3072), dtype=np.uint8), b"labels": list(range(count))}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])  # 2: bytes as _codecs.encode calls
def test_cifar10_batches(tmp_path: Path, protocol: int):
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _cifar_batch(tmp_path / name, 4, protocol)
    image_set = load_cifar10(Config(dataset="cifar10", data_dir=tmp_path))
    assert image_set.images.shape == (20, 3, 32, 32)
    assert load_cifar10(Config(dataset="cifar10", data_dir=tmp_path, split="test")).images.shape == (4, 3, 32, 32)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_cifar10_refuses_arbitrary_pickles(tmp_path: Path):
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}))
    with pytest.raises(DatasetError, match="refusing to load"):
        load_cifar10(Config(dataset="cifar10", data_dir=tmp_path, split="test"))


def test_image_folder_with_labels_and_unreadable_files(tmp_path: Path, caplog):
    for label, name in enumerate(["cats", "dogs"]):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((12, 12, 3), 40 * i + label, np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not an image")
    image_set = load_image_folder(tmp_path)
    assert image_set.images.shape == (6, 3, 12, 12)
    assert image_set.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert "skipped 1 unreadable files" in caplog.text and "broken.png" in caplog.text
    assert "1 unreadable skipped" in image_set.source


def test_image_folder_without_subfolders_has_no_labels(tmp_path: Path):
    for i in range(2):
        Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / f"{i}.png")
    image_set = load_image_folder(tmp_path)
    assert image_set.labels is None and image_set.images.shape == (2, 1, 9, 9)


def test_image_folder_errors(tmp_path: Path):
    with pytest.raises(DatasetError, match="is empty"):
        load_image_folder(tmp_path)
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="no readable images"):
        load_image_folder(tmp_path)
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((10, 9), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(DatasetError, match="different sizes"):
        load_image_folder(tmp_path)


def test_download_puts_the_idx_files_in_the_data_dir(tmp_path: Path, idx_dir: Path, monkeypatch):
    """--download goes through torchvision's downloader (replaced here: no internet in tests)."""
    import torchvision.datasets

    import deepcluster.data as data_module

    class FakeFashionMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            assert download
            raw = Path(root) / "FashionMNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            for path in idx_dir.glob("*-ubyte*"):
                (raw / path.name).write_bytes(path.read_bytes())

    project_data = tmp_path / "project-data"
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    monkeypatch.setattr(data_module, "PROJECT_DATA_DIR", project_data)
    monkeypatch.setattr(data_module, "SYSTEM_DATA_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="set download"):
        load_dataset(Config(dataset="fashion-mnist"))
    image_set = load_dataset(Config(dataset="fashion-mnist", download=True))
    assert len(image_set) == 6 and not (project_data / "fashion-mnist" / ".download").exists()
    assert len(load_dataset(Config(dataset="fashion-mnist"))) == 6  # found there next time, no download
