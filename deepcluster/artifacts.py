"""The run directory: layout, Parquet and checkpoint I/O, manifests, atomic epoch commits, locking.

    <runs_dir>/<run_id>/
        run.json                 config, dataset name and fingerprint, versions, device, created time
        data/                    images.npy, labels.npy, inputs.npy, initial_model.pt, manifest.json
        epochs/<NNNN>/           features.parquet, assignments.parquet, centroids.npy, metrics.json, model.pt,
                                 manifest.json; with PCA also pca_mean.npy, pca_projection.npy
        epochs/.<NNNN>.partial/  an epoch being written; renamed to <NNNN> as its last step

An epoch directory exists only once complete, so a crash never leaves one that looks finished.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
EPOCH_DIR_PATTERN = re.compile(r"^\d{4}$")
MANIFEST = "manifest.json"
CENTROIDS = "centroids.npy"  # per epoch: the centroids that assign an image to the epoch's clusters
PCA_MEAN, PCA_PROJECTION = "pca_mean.npy", "pca_projection.npy"  # per epoch, where PCA is on: the whitening
WRITER_NICENESS = 19
PARQUET_CODEC = "lz4"  # fast; whitened float features barely compress with any codec


class RunError(ValueError):
    """A run cannot be used as asked (bad id, missing run, changed config or dataset)."""


class RunLockedError(RuntimeError):
    """Another process is writing this run."""


def validate_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.match(run_id):
        raise RunError(f"run id {run_id!r} is invalid: use 1-128 letters, digits, '-' or '_'")
    return run_id


def default_runs_dir() -> Path:
    """`DEEPCLUSTER_RUNS_DIR`, else `runs/` in the working directory."""
    return Path(os.environ.get("DEEPCLUSTER_RUNS_DIR", "runs"))


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run's artifacts."""

    runs_dir: Path
    run_id: str

    def __post_init__(self) -> None:
        validate_run_id(self.run_id)

    @property
    def root(self) -> Path:
        return self.runs_dir / self.run_id

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def images(self) -> Path:
        return self.data_dir / "images.npy"

    @property
    def labels(self) -> Path:
        return self.data_dir / "labels.npy"

    @property
    def inputs(self) -> Path:
        return self.data_dir / "inputs.npy"

    @property
    def initial_model(self) -> Path:
        return self.data_dir / "initial_model.pt"

    @property
    def evaluation(self) -> Path:
        """Where `deepcluster evaluate` keeps a run's evaluations, by epoch."""
        return self.root / "evaluation.json"

    def groups(self, epoch: int, num_groups: int, method: str) -> Path:
        """Where an epoch's images grouped into `num_groups` by `method` are kept (`deepcluster group`)."""
        return self.root / "groups" / f"epoch{epoch:04d}-{num_groups}-{method}.parquet"

    @property
    def epochs_dir(self) -> Path:
        return self.root / "epochs"

    @property
    def lock_file(self) -> Path:
        return self.runs_dir / f".{self.run_id}.lock"

    def epoch_dir(self, epoch: int) -> Path:
        return self.epochs_dir / f"{epoch:04d}"

    def staging_dir(self, epoch: int) -> Path:
        return self.epochs_dir / f".{epoch:04d}.partial"

    def exists(self) -> bool:
        return self.run_json.is_file()

    def completed_epochs(self) -> list[int]:
        """Epochs whose directory was committed, in order."""
        if not self.epochs_dir.is_dir():
            return []
        return sorted(int(path.name) for path in self.epochs_dir.iterdir() if EPOCH_DIR_PATTERN.match(path.name))

    def model_before(self, epoch: int) -> Path:
        """The checkpoint whose weights extract epoch `epoch`'s features."""
        return self.initial_model if epoch == 0 else self.epoch_dir(epoch - 1) / "model.pt"

    def discard_partial_epochs(self) -> list[Path]:
        """Remove epochs left half-written by a crash. Returns what was removed."""
        removed = sorted(self.epochs_dir.glob(".*.partial")) if self.epochs_dir.is_dir() else []
        for path in removed:
            shutil.rmtree(path)
        return removed


def find_run(run_id: str, runs_dir: Path | None = None) -> RunLayout:
    """The layout of an existing run, or a RunError naming where it was looked for."""
    layout = RunLayout(runs_dir or default_runs_dir(), validate_run_id(run_id))
    if not layout.exists():
        raise RunError(f"no run {run_id!r} in {layout.runs_dir} (no {layout.run_json})")
    return layout


def list_runs(runs_dir: Path) -> list[RunLayout]:
    if not runs_dir.is_dir():
        return []
    return [
        RunLayout(runs_dir, path.name)
        for path in sorted(runs_dir.iterdir())
        if RUN_ID_PATTERN.match(path.name) and (path / "run.json").is_file()
    ]


# ---------------------------------------------------------------- locking


class RunLock:
    """An exclusive, non-blocking lock on a run, released when the process ends (even by SIGKILL)."""

    def __init__(self, layout: RunLayout) -> None:
        self.layout = layout
        self._handle: Any = None

    def __enter__(self) -> RunLock:
        self.layout.runs_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.layout.lock_file, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise RunLockedError(
                f"run {self.layout.run_id!r} is being written by another process (pid {owner}); "
                "wait for it to finish or stop it first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._handle.seek(0)
        self._handle.truncate()
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


# ---------------------------------------------------------------- background writing


class ArtifactWriter:
    """Runs write jobs on one background thread, in the order they were submitted.

    The flow submits an epoch's files and then its commit; the commit therefore runs after the
    files are written, while the next epoch already computes. Once a job fails, no later job runs
    (so no epoch with a missing file is committed); the error surfaces on the next `submit` or on
    `flush`. Leaving the context waits for every submitted job, so an epoch whose files were all
    handed over is still committed when a later stage fails.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, "artifact-writer", initializer=_lower_own_priority)
        self._pending: list[Future[None]] = []
        self._lock = threading.Lock()
        self._busy: defaultdict[int, float] = defaultdict(float)
        self._failed = False

    def submit(self, epoch: int, job: Callable[..., object], *args: Any) -> None:
        """Queue job(*args); its time is counted as epoch `epoch`'s writing time."""
        self.raise_errors()
        self._pending.append(self._executor.submit(self._timed, epoch, job, *args))

    def busy_seconds(self, epoch: int) -> float:
        """Seconds the writer spent on epoch `epoch`'s jobs so far."""
        with self._lock:
            return round(self._busy[epoch], 4)

    def raise_errors(self) -> None:
        """Re-raise the error of the first finished job that failed."""
        for future in self._pending:
            if future.done() and future.exception() is not None:
                raise RuntimeError("writing an artifact failed") from future.exception()
        self._pending = [future for future in self._pending if not future.done()]

    def flush(self) -> None:
        """Wait for every queued job; raise the first error."""
        for future in self._pending:
            future.exception()
        self.raise_errors()

    def _timed(self, epoch: int, job: Callable[..., object], *args: Any) -> None:
        if self._failed:
            raise RuntimeError("skipped: an earlier write failed")
        start = time.perf_counter()
        try:
            job(*args)
        except BaseException:
            self._failed = True
            raise
        with self._lock:
            self._busy[epoch] += time.perf_counter() - start

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._executor.shutdown(wait=True)


def _lower_own_priority() -> None:
    """Give the calling thread the lowest CPU priority (on Linux a thread is scheduled on its own),
    so writing artifacts takes the gaps the compute threads leave instead of stalling them."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)
    except OSError:  # not permitted or not supported: write at normal priority
        pass


# ---------------------------------------------------------------- files


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """Open `path` for writing so it is either absent or complete: temp file, fsync, rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    with atomic_open(path) as handle:
        handle.write(payload)


def write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def save_array(path: Path, array: np.ndarray) -> None:
    with atomic_open(path) as handle:
        np.save(handle, array, allow_pickle=False)


def load_array(path: Path, mmap: bool = False) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def write_features(path: Path, features: np.ndarray) -> None:
    """features: float32 (N, d) -> Parquet with `index` int64 and `features` fixed_size_list<float32>[d]."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), features.shape[1])
    table = pa.table({"index": pa.array(np.arange(len(features), dtype=np.int64)), "features": vectors})
    pq.write_table(table, path, compression=PARQUET_CODEC)


def read_features(path: Path) -> np.ndarray:
    """Parquet written by `write_features` -> float32 (N, d), rows in `index` order."""
    table = pq.read_table(path)
    column = table.column("features").combine_chunks()
    features = column.values.to_numpy(zero_copy_only=False, writable=True).reshape(len(column), column.type.list_size)
    index = table.column("index").to_numpy()
    return features if np.array_equal(index, np.arange(len(index))) else features[np.argsort(index)]


def write_assignments(path: Path, clusters: np.ndarray, labels: np.ndarray | None, column: str = "cluster") -> None:
    """Parquet with `index` int64, `column` int32 and `label` int32 (null where there are no labels), atomically."""
    label_column = pa.nulls(len(clusters), pa.int32()) if labels is None else pa.array(labels.astype(np.int32))
    table = pa.table(
        {
            "index": pa.array(np.arange(len(clusters), dtype=np.int64)),
            column: pa.array(np.asarray(clusters, dtype=np.int32)),
            "label": label_column,
        }
    )
    with atomic_open(path) as handle:
        pq.write_table(table, handle, compression=PARQUET_CODEC)


def read_clusters(path: Path) -> np.ndarray:
    """The `cluster` column of an assignments file, in `index` order, as int64."""
    table = pq.read_table(path, columns=["index", "cluster"])
    order = np.argsort(table.column("index").to_numpy())
    return table.column("cluster").to_numpy().astype(np.int64)[order]


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    with atomic_open(path) as handle:
        torch.save(checkpoint, handle)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location=device, weights_only=True)


# ---------------------------------------------------------------- manifests


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> dict[str, Any]:
    """Record sha256 and size of every file in `directory` (except the manifest) in manifest.json."""
    files = {
        path.name: {"sha256": sha256_file(path), "size": path.stat().st_size}
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != MANIFEST and not path.name.startswith(".")
    }
    manifest = {"files": files}
    write_json(directory / MANIFEST, manifest)
    return manifest


def verify_manifest(directory: Path) -> list[str]:
    """Problems found re-hashing `directory` against its manifest; empty when intact."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return [f"{manifest_path}: missing"]
    try:
        recorded = read_json(manifest_path)["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return [f"{manifest_path}: unreadable"]
    problems = []
    present = {path.name for path in directory.iterdir() if path.is_file() and path.name != MANIFEST}
    for name, expected in sorted(recorded.items()):
        path = directory / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != expected["size"] or sha256_file(path) != expected["sha256"]:
            problems.append(f"{path}: content differs from the manifest")
    problems += [f"{directory / name}: not in the manifest" for name in sorted(present - set(recorded))]
    return problems


def verify_run(layout: RunLayout) -> dict[str, list[str]]:
    """Problems of a run's data directory ("data") and of each finished epoch ("epoch N") against their
    manifests; every list is empty when the run is intact. A run with no data directory yet has none."""
    problems = {"data": verify_manifest(layout.data_dir) if layout.data_dir.is_dir() else []}
    for epoch in layout.completed_epochs():
        problems[f"epoch {epoch}"] = verify_manifest(layout.epoch_dir(epoch))
    return problems


def commit_epoch(layout: RunLayout, epoch: int) -> Path:
    """Seal a staged epoch: write its manifest, then rename it to its final name in one step."""
    staging = layout.staging_dir(epoch)
    write_manifest(staging)
    final = layout.epoch_dir(epoch)
    os.rename(staging, final)
    directory_handle = os.open(layout.epochs_dir, os.O_RDONLY)
    try:
        os.fsync(directory_handle)
    finally:
        os.close(directory_handle)
    return final


def begin_epoch(layout: RunLayout, epoch: int) -> Path:
    """A fresh staging directory for `epoch` (an older partial one is discarded)."""
    staging = layout.staging_dir(epoch)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging
