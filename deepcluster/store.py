"""The input store: a folder of images decoded once into the network's inputs on disk, shared by its runs.

A folder of photos can be far larger than memory (1.28 M images at 224 pixels are 64 GB as grayscale
uint8), so ingest never holds it: worker processes decode the files a chunk at a time (grayscale, the
shorter side resized to the input size, then a centre crop) into one uint8 array on disk (N, 1, S, S),
written a chunk at a time, which the runs read a batch at a time. Memory stays bounded by a few chunks whatever the
number of images. The workers decode with PIL alone (`deepcluster.decode`: no torch in them).

    <store_dir>/<key>/
        inputs.npy       uint8 (N, 1, S, S): the readable images, in the order of files.parquet
        labels.npy       int64 (N,): where every image lies in a first-level sub-folder (its class)
        files.parquet    index, path (relative to the folder), label (or null)
        unreadable.json  the files that could not be decoded, each with its error
        meta.json        written last: the store is complete (size, counts, class names, fingerprint)
        partial/         while ingesting: inputs.npy for every file and one NNNNNNNN.json per decoded chunk

The key is a hash of the folder's listing (every file's relative path, size and modification time) and of
the preprocessing, so runs on the same folder at the same size share one store, and a changed folder gets a
new one. A killed ingest continues where it stopped: a chunk counts as decoded once its rows are on the storage and
its marker is written. One process ingests a store at a time (a lock next to it); the others wait and reuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepcluster import artifacts, decode
from deepcluster.data import selection
from deepcluster.errors import ConfigError, DatasetError
from deepcluster.loader import FileRows
from deepcluster.runtime import cpu_count

logger = logging.getLogger(__name__)

STORE_VERSION = 2  # part of every key: a change to the preprocessing below makes new stores
CHUNK_FILES = 256  # files decoded per task: bounds the memory of each worker and of the writer
HASH_ROWS = 4096  # rows hashed (and copied) at a time when the store is finished
PROGRESS_SECONDS = 30  # at most one progress line this often


def default_store_dir() -> Path:
    """`DEEPCLUSTER_STORE_DIR`, else ~/.cache/deepcluster/store."""
    configured = os.environ.get("DEEPCLUSTER_STORE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "deepcluster" / "store"


@dataclass(frozen=True)
class Listing:
    """The files of a folder (sorted relative paths) and the hash of their paths, sizes and modification times."""

    directory: Path
    files: list[str]
    digest: str

    def labels(self) -> tuple[np.ndarray | None, list[str]]:
        """Class ids from the first-level sub-folder of every file, and the class names; None where any file
        lies at the top level."""
        parts = [path.split("/", 1) for path in self.files]
        if not all(len(part) == 2 for part in parts):
            return None, []
        names = sorted({part[0] for part in parts})
        index = {name: label for label, name in enumerate(names)}
        return np.array([index[part[0]] for part in parts], dtype=np.int64), names


def list_folder(directory: Path) -> Listing:
    """Every file below `directory` but hidden ones, sorted; DatasetError where there is none."""
    if not directory.is_dir():
        raise DatasetError(f"image folder {directory} does not exist or is not a directory")
    digest = hashlib.sha256()
    files = []
    for path in sorted(path for path in directory.rglob("*") if not path.name.startswith(".")):
        if not path.is_file():
            continue
        relative = path.relative_to(directory).as_posix()
        status = path.stat()
        digest.update(f"{relative}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
        files.append(relative)
    if not files:
        raise DatasetError(f"image folder {directory} is empty")
    return Listing(directory, files, digest.hexdigest())


@dataclass(frozen=True)
class StoredImages:
    """A complete store: where it is and what it holds."""

    root: Path
    meta: dict[str, Any]

    @property
    def inputs(self) -> Path:
        return self.root / "inputs.npy"

    @property
    def labels_path(self) -> Path:
        return self.root / "labels.npy"

    @property
    def files(self) -> Path:
        return self.root / "files.parquet"

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def num_images(self) -> int:
        return int(self.meta["num_images"])

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    def load_inputs(self) -> np.ndarray:
        """uint8 (N, 1, S, S), memory-mapped read-only."""
        return artifacts.load_array(self.inputs, mmap=True)

    def load_labels(self) -> np.ndarray | None:
        return artifacts.load_array(self.labels_path) if self.labels_path.is_file() else None

    def select(self, classes: tuple[int, ...] | None, limit: int | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The rows that `classes` and `limit` keep (`data.selection`), and their labels (None without labels)."""
        labels = self.load_labels()
        keep = selection(self.num_images, labels, classes, limit, self.source())
        return keep, None if labels is None else labels[keep]

    def source(self) -> str:
        meta = self.meta
        return f"folder:{meta['directory']} ({meta['num_images']} images, {meta['num_unreadable']} unreadable skipped)"


def store_key(listing: Listing, image_size: int | None, min_size: int) -> str:
    """The store of `listing` preprocessed to `image_size` (None: the images' own size, at least `min_size`)."""
    spec = {"version": STORE_VERSION, "listing": listing.digest, "image_size": image_size, "min_size": min_size}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def ingest_folder(
    directory: Path,
    image_size: int | None,
    min_size: int,
    store_dir: Path | None = None,
    workers: int | None = None,
    listing: Listing | None = None,
) -> StoredImages:
    """The store of the images below `directory` at `image_size` pixels (None: their own size, which must be one
    square size for all, raised to `min_size`), decoding them first where no complete store exists.

    workers: decoding processes (default: one per core); 1 decodes in this process."""
    listing = listing or list_folder(directory)
    root = (store_dir or default_store_dir()) / store_key(listing, image_size, min_size)
    if (root / "meta.json").is_file():
        return StoredImages(root, artifacts.read_json(root / "meta.json"))
    root.parent.mkdir(parents=True, exist_ok=True)
    busy = f"ingest of {directory}"
    with artifacts.FileLock(root.with_name(root.name + ".lock"), busy, on_wait=_log_waiting):
        if not (root / "meta.json").is_file():  # another process may have finished it while this one waited
            _build(listing, root, image_size, min_size, workers or cpu_count())
    return StoredImages(root, artifacts.read_json(root / "meta.json"))


def _log_waiting(holder: str) -> None:
    logger.info("the input store is being written by another process (%s): waiting for it", holder)


def _build(listing: Listing, root: Path, image_size: int | None, min_size: int, workers: int) -> None:
    partial = root / "partial"
    chunks = [listing.files[start : start + CHUNK_FILES] for start in range(0, len(listing.files), CHUNK_FILES)]
    settings = partial / "settings.json"
    if settings.is_file():
        size = int(artifacts.read_json(settings)["image_size"])
    else:  # nothing is written before the size is known to be fine
        size = image_size or max(_native_size(listing, chunks, workers), min_size)
        partial.mkdir(parents=True, exist_ok=True)
        artifacts.write_json(settings, {"image_size": size})
    rows = artifacts.RowFile.open(partial / "inputs.npy", (len(listing.files), 1, size, size))
    if rows is None:  # none yet, or the one a kill left while it was being created
        for marker in partial.glob("[0-9]*.json"):
            marker.unlink()
        rows = artifacts.RowFile.create(partial / "inputs.npy", (len(listing.files), 1, size, size))
    todo = [index for index in range(len(chunks)) if not _marker(partial, index).is_file()]
    logger.info(
        "decoding %d files of %s into the input store %s at %d pixels, %d workers (%d of %d chunks already done)",
        len(listing.files),
        listing.directory,
        root,
        size,
        workers,
        len(chunks) - len(todo),
        len(chunks),
    )
    reported = time.monotonic()
    for done, (index, (images, unreadable)) in enumerate(_decoded(listing.directory, chunks, todo, size, workers), 1):
        rows.write(index * CHUNK_FILES, images)
        artifacts.write_json(_marker(partial, index), {"unreadable": unreadable})
        if time.monotonic() - reported > PROGRESS_SECONDS:
            logger.info("input store %s: %d of %d chunks decoded", root.name, done, len(todo))
            reported = time.monotonic()
    _finish(listing, root, rows, len(chunks))


def _marker(partial: Path, index: int) -> Path:
    return partial / f"{index:08d}.json"


def _native_size(listing: Listing, chunks: list[list[str]], workers: int) -> int:
    """The one square size of all readable images; ConfigError where they differ."""
    sizes: set[tuple[int, int]] = set()
    for found in _pool_map(decode.chunk_sizes, [(listing.directory, chunk) for chunk in chunks], workers):
        sizes |= found
    if not sizes:
        raise DatasetError(f"image folder {listing.directory} has no readable images ({len(listing.files)} files)")
    if len(sizes) > 1:
        raise ConfigError(
            f"images in {listing.directory} have {len(sizes)} different sizes (e.g. {sorted(sizes)[:3]}): "
            "set image_size (each image's shorter side is resized to it, then centre-cropped)"
        )
    height, width = sizes.pop()
    if height != width:
        raise ConfigError(f"images in {listing.directory} are {height}x{width}, not square: set image_size")
    return height


def _decoded(
    directory: Path, chunks: list[list[str]], todo: list[int], size: int, workers: int
) -> Iterator[tuple[int, tuple[np.ndarray, list[dict[str, str]]]]]:
    results = _pool_map(decode.decode_chunk, [(directory, chunks[index], size) for index in todo], workers)
    yield from zip(todo, results, strict=True)


def _pool_map(function: Any, argument_tuples: list[tuple[Any, ...]], workers: int) -> Iterator[Any]:
    """function(*arguments) for each, in order, in `workers` processes (here where 1), at most two tasks per
    worker at once so that finished results never pile up in memory."""
    if workers <= 1 or len(argument_tuples) <= 1:
        for arguments in argument_tuples:
            yield function(*arguments)
        return
    context = multiprocessing.get_context("spawn")  # never fork a process that runs torch threads
    with ProcessPoolExecutor(min(workers, len(argument_tuples)), context) as pool:
        waiting = deque(argument_tuples)
        pending: deque[Future[Any]] = deque()
        while waiting or pending:
            while waiting and len(pending) < 2 * workers:
                pending.append(pool.submit(function, *waiting.popleft()))
            yield pending.popleft().result()


def _finish(listing: Listing, root: Path, rows: artifacts.RowFile, num_chunks: int) -> None:
    """Keep the readable rows (in file order), hash them, write labels, file list and report, then meta.json."""
    partial = rows.path.parent
    unreadable = [
        entry for index in range(num_chunks) for entry in artifacts.read_json(_marker(partial, index))["unreadable"]
    ]
    bad = {entry["path"] for entry in unreadable}
    readable = np.array([name not in bad for name in listing.files])
    keep = np.flatnonzero(readable)
    if len(keep) == 0:
        raise DatasetError(f"image folder {listing.directory} has no readable images ({len(bad)} unreadable files)")
    shape = (len(keep), *rows.shape[1:])
    digest = hashlib.sha256(repr(shape).encode())
    target = root / "inputs.npy"
    decoded = FileRows(rows.path)
    if bad:  # the readable rows, copied block by block
        temporary = root / ".inputs.npy.tmp"
        kept, written = artifacts.RowFile.create(temporary, shape), 0
        for start in range(0, rows.shape[0], HASH_ROWS):
            block = decoded[start : start + HASH_ROWS].read().numpy()[readable[start : start + HASH_ROWS]]
            kept.write(written, block)
            digest.update(block.data)
            written += len(block)
        os.replace(temporary, target)
    else:  # the decoded rows are the store's: linked, so that partial/ stays whole until meta.json is written
        for start in range(0, rows.shape[0], HASH_ROWS):
            digest.update(decoded[start : start + HASH_ROWS].read().numpy().data)
        target.unlink(missing_ok=True)
        os.link(rows.path, target)
    labels, names = listing.labels()
    files = [listing.files[index] for index in keep]
    if labels is not None:
        labels = labels[keep]
        artifacts.save_array(root / "labels.npy", labels)
    table = pa.table(
        {
            "index": pa.array(np.arange(len(keep)), pa.int64()),
            "path": pa.array(files, pa.string()),
            "label": pa.array(labels, pa.int64()) if labels is not None else pa.nulls(len(keep), pa.int64()),
        }
    )
    with artifacts.atomic_open(root / "files.parquet") as handle:
        pq.write_table(table, handle)
    artifacts.write_json(root / "unreadable.json", unreadable)
    if unreadable:
        logger.warning(
            "skipped %d unreadable files in %s (listed in %s): %s",
            len(unreadable),
            listing.directory,
            root / "unreadable.json",
            ", ".join(entry["path"] for entry in unreadable[:10]),
        )
    meta = {
        "version": STORE_VERSION,
        "directory": str(listing.directory),
        "listing": listing.digest,
        "image_size": rows.shape[-1],
        "num_files": len(listing.files),
        "num_images": len(keep),
        "num_unreadable": len(unreadable),
        "class_names": names,
        "fingerprint": digest.hexdigest(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    artifacts.fsync_path(root / "inputs.npy")
    artifacts.write_json(root / "meta.json", meta)
    shutil.rmtree(partial, ignore_errors=True)
