"""Rebuild the embedded sample: the first 5,000 Fashion-MNIST training images of classes 0, 1, 2.

Usage: python data/make_sample.py [SOURCE_DIR]   (default: /usr/share/datasets/fashion-mnist,
where Debian's dataset-fashion-mnist package installs the IDX files)
"""

import gzip
import sys
from pathlib import Path

import numpy as np

from deepcluster.data import load_idx_dataset, select

SAMPLE_DIR = Path(__file__).resolve().parent / "fashion-mnist-sample"


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(size.to_bytes(4, "big") for size in array.shape)
    # mtime=0 keeps the file byte-identical across rebuilds.
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as handle:
        handle.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/usr/share/datasets/fashion-mnist")
    sample = select(load_idx_dataset(source, "train", str(source)), classes=(0, 1, 2), limit=5000)
    SAMPLE_DIR.mkdir(exist_ok=True)
    write_idx(SAMPLE_DIR / "train-images-idx3-ubyte.gz", sample.images[:, 0], 0x00000803)
    write_idx(SAMPLE_DIR / "train-labels-idx1-ubyte.gz", sample.labels, 0x00000801)
    print(f"wrote {len(sample)} images, label counts {np.bincount(sample.labels).tolist()}, to {SAMPLE_DIR}")


if __name__ == "__main__":
    main()
