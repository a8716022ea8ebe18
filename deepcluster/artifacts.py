"""The run directory: layout, Parquet and checkpoint I/O, manifests, atomic epoch commits, locking.

    <runs_dir>/<run_id>/
        run.json                 config, dataset name and fingerprint, versions, device, created time
        data/                    images.npy (or, for a folder, files.parquet), labels.npy, inputs.npy,
                                 initial_model.pt, manifest.json
        epochs/<NNNN>/           features.parquet, assignments.parquet, centroids.npy, metrics.json, model.pt,
                                 manifest.json; with PCA also pca_mean.npy, pca_projection.npy
        staging/<NNNN>/          an epoch being written; renamed to epochs/<NNNN> as its last step, so that
                                 epochs/*/ only ever matches committed epochs

An epoch directory exists only once complete, so a crash never leaves one that looks finished.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import stat
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from deepcluster.errors import RunError, RunLockedError
from deepcluster.loader import FileRows

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")  # whole names only: fullmatch
EPOCH_DIR_PATTERN = re.compile(r"[0-9]{4}")
MANIFEST = "manifest.json"
# The files of an epoch directory (RunLayout gives their paths)
FEATURES, ASSIGNMENTS, METRICS, MODEL = "features.parquet", "assignments.parquet", "metrics.json", "model.pt"
CENTROIDS = "centroids.npy"  # per epoch: the centroids that assign an image to the epoch's clusters
PCA_MEAN, PCA_PROJECTION = "pca_mean.npy", "pca_projection.npy"  # per epoch, where PCA is on: the whitening
WRITER_NICENESS = 19
PARQUET_CODEC = "lz4"  # fast; whitened float features barely compress with any codec


def validate_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.fullmatch(run_id):
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
    def files(self) -> Path:
        """The file of every image (index, path, label), for runs of a folder read through the input store."""
        return self.data_dir / "files.parquet"

    @property
    def ingested_images(self) -> Path:
        """The images as the run ingested them: data/images.npy, or data/inputs.npy (grayscale, resized) for a
        folder read through the input store, which keeps no other copy."""
        return self.images if self.images.is_file() else self.inputs

    @property
    def initial_model(self) -> Path:
        return self.data_dir / "initial_model.pt"

    @property
    def evaluation(self) -> Path:
        """Where `deepcluster evaluate` keeps a run's evaluations, by epoch."""
        return self.root / "evaluation.json"

    @property
    def evaluation_lock(self) -> Path:
        return self.root / ".evaluation.lock"

    @property
    def report_dir(self) -> Path:
        """Where the run's HTML report is written (index.html and its figures)."""
        return self.root / "report"

    def features(self, epoch: int) -> Path:
        return self.epoch_dir(epoch) / FEATURES

    def assignments(self, epoch: int) -> Path:
        return self.epoch_dir(epoch) / ASSIGNMENTS

    def metrics(self, epoch: int) -> Path:
        return self.epoch_dir(epoch) / METRICS

    def model(self, epoch: int) -> Path:
        """The checkpoint written at the end of `epoch`."""
        return self.epoch_dir(epoch) / MODEL

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

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    def staging_dir(self, epoch: int) -> Path:
        return self.staging / f"{epoch:04d}"

    def exists(self) -> bool:
        return self.run_json.is_file()

    def completed_epochs(self) -> list[int]:
        """Epochs whose directory was committed, in order."""
        if not self.epochs_dir.is_dir():
            return []
        return sorted(int(path.name) for path in self.epochs_dir.iterdir() if EPOCH_DIR_PATTERN.fullmatch(path.name))

    def model_before(self, epoch: int) -> Path:
        """The checkpoint whose weights extract epoch `epoch`'s features."""
        return self.initial_model if epoch == 0 else self.model(epoch - 1)

    def discard_partial_epochs(self) -> list[Path]:
        """Remove epochs left half-written by a crash (and the epochs/.NNNN.partial/ of older versions).
        Returns what was removed."""
        removed = sorted(self.staging.iterdir()) if self.staging.is_dir() else []
        removed += sorted(self.epochs_dir.glob(".*.partial")) if self.epochs_dir.is_dir() else []
        for path in removed:
            shutil.rmtree(path)
        return removed


def read_run_record(layout: RunLayout) -> dict[str, Any]:
    """run.json: the run's config, dataset and provenance; a RunError naming the file where it is damaged."""
    record = read_json(layout.run_json)
    dataset = record.get("dataset") if isinstance(record, dict) else None
    if not (
        isinstance(dataset, dict)
        and isinstance(record.get("config"), dict)
        and {"source", "fingerprint", "image_shape"} <= dataset.keys()
    ):
        raise RunError(f"{layout.run_json} lacks the run's config or dataset: it was altered or damaged")
    return record


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
        if RUN_ID_PATTERN.fullmatch(path.name) and (path / "run.json").is_file()
    ]


# ---------------------------------------------------------------- locking


class FileLock:
    """An exclusive lock on a file of its own (`lock_file`: never through a link), held until release or until
    the process ends, even by SIGKILL. The file says who holds it (`holder`, with the pid) and is removed on
    release. wait: wait for another holder, calling on_wait(who holds it) first; else raise BlockingIOError
    whose `filename` says who holds it."""

    def __init__(
        self, path: Path, holder: str = "", wait: bool = True, on_wait: Callable[[str], None] | None = None
    ) -> None:
        self.path, self.holder, self.wait, self.on_wait = path, holder, wait, on_wait
        self._descriptor = -1

    def __enter__(self) -> FileLock:
        try:
            self._descriptor = lock_file(self.path, wait=False)
        except BlockingIOError as busy:
            if not self.wait:
                raise
            if self.on_wait:
                self.on_wait(str(busy.filename))
            self._descriptor = lock_file(self.path, wait=True)
        os.ftruncate(self._descriptor, 0)
        os.pwrite(self._descriptor, ", ".join(filter(None, [self.holder, f"pid {os.getpid()}"])).encode(), 0)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        """Remove the lock file and release the lock (once)."""
        if self._descriptor >= 0:
            descriptor, self._descriptor = self._descriptor, -1
            unlock_file(self.path, descriptor)


class RunLock(FileLock):
    """The lock of a run while it is written: a second writer is refused at once (RunLockedError). `held` is the
    run lock this process holds, if any (a stop on a signal releases it)."""

    held: ClassVar[RunLock | None] = None

    def __init__(self, layout: RunLayout) -> None:
        super().__init__(layout.lock_file, wait=False)
        self.layout = layout

    def __enter__(self) -> RunLock:
        runs_dir = self.layout.runs_dir
        if runs_dir.exists() and not runs_dir.is_dir():
            raise RunError(f"the runs directory {runs_dir} is not a directory")
        runs_dir.mkdir(parents=True, exist_ok=True)
        try:
            super().__enter__()
        except BlockingIOError as busy:
            raise RunLockedError(
                f"run {self.layout.run_id!r} is being written by another process ({busy.filename}); "
                "wait for it to finish or stop it first"
            ) from None
        RunLock.held = self
        return self

    def release(self) -> None:
        if RunLock.held is self:
            RunLock.held = None
        super().release()


def device_locks_dir() -> Path:
    """`DEEPCLUSTER_LOCKS_DIR`, else ~/.cache/deepcluster/locks: where the runs of this user on this machine take
    turns on each device."""
    configured = os.environ.get("DEEPCLUSTER_LOCKS_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "deepcluster" / "locks"


def device_lock(device: str, run_id: str, on_wait: Callable[[str], None] | None = None) -> FileLock:
    """One run at a time on a device of this machine, whatever started it (a deployment's worker, `serve`, the
    command line): a second run waits until the first ends or its process dies (even by SIGKILL, at once).

    device: "cpu", "cuda:0", ...; on_wait: called with who holds the device when it is busy, before waiting."""
    directory = device_locks_dir()
    directory.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_-]", "-", device)
    return FileLock(directory / f"device-{name}.lock", f"run {run_id}", on_wait=on_wait)


def lock_file(path: Path, wait: bool = True) -> int:
    """Take an exclusive lock on the file `path` (created if missing) and return its descriptor.

    Never follows a symbolic link and never touches anything but a plain file of this user with one name,
    so a file planted at `path` cannot be turned against the user. Without `wait`, a lock held elsewhere
    raises BlockingIOError whose `filename` is what its holder wrote in the file, or "unknown"."""
    while True:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EISDIR):
                kind = "a symbolic link, which is never followed" if error.errno == errno.ELOOP else "a directory"
                raise RunError(f"the lock file {path} is {kind}; remove it") from None
            raise
        found = os.fstat(descriptor)
        if not stat.S_ISREG(found.st_mode) or found.st_nlink != 1 or found.st_uid != os.geteuid():
            os.close(descriptor)
            raise RunError(f"the lock file {path} is not a plain file of this user with one name; remove it")
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError as busy:
            owner = os.pread(descriptor, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise BlockingIOError(busy.errno, busy.strerror, owner) from None
        if _same_file(path, found):
            return descriptor
        os.close(descriptor)  # its holder removed it while we waited: lock the file that is there now


def unlock_file(path: Path, descriptor: int) -> None:
    """Remove the lock file taken by `lock_file` (if it is still the one there) and release the lock."""
    if _same_file(path, os.fstat(descriptor)):
        path.unlink()
    os.close(descriptor)


def _same_file(path: Path, found: os.stat_result) -> bool:
    try:
        current = os.lstat(path)
    except FileNotFoundError:
        return False
    return (current.st_dev, current.st_ino) == (found.st_dev, found.st_ino)


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
        """Raise the error of the first finished job that failed (a full disk's OSError, say) as it was."""
        for future in self._pending:
            error = future.exception() if future.done() else None
            if error is not None:
                raise error
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
    """Open `path` for writing so it is either absent or complete: temp file, fsync, rename, fsync of the folder."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)  # a leftover of a crash, or anything planted there: never written through
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with open(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:  # a full disk, say: leave nothing behind but what was there
        temporary.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)  # the new name too survives a power loss


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    with atomic_open(path) as handle:
        handle.write(payload)


def write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    """The JSON in `path`; a RunError naming the file where it is not JSON."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunError(f"{path} is not valid JSON ({error}): it was altered or damaged") from None


def save_array(path: Path, array: np.ndarray) -> None:
    with atomic_open(path) as handle:
        np.save(handle, array, allow_pickle=False)


def load_array(path: Path, mmap: bool = False) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


@dataclass(frozen=True)
class RowFile:
    """A uint8 .npy file written a block of rows at a time with plain file I/O at row offsets, not memory-mapped:
    the process holds the rows in hand and nothing else, whatever the file's size. `loader.FileRows` reads it."""

    path: Path
    shape: tuple[int, ...]
    offset: int  # of row 0: the length of the .npy header

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:])

    @classmethod
    def create(cls, path: Path, shape: tuple[int, ...]) -> RowFile:
        """A new file of zeros (sparse where the file system allows)."""
        created = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        offset = created.offset
        del created
        return cls(path, shape, offset)

    @classmethod
    def open(cls, path: Path, shape: tuple[int, ...]) -> RowFile | None:
        """The existing file of that shape, or None where there is none or it is not whole."""
        try:
            existing = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        if existing.shape != shape or existing.dtype != np.uint8:
            return None
        return cls(path, shape, existing.offset)

    def write(self, start: int, rows: np.ndarray) -> None:
        """Rows from `start` on, on the storage when this returns."""
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(descriptor, np.ascontiguousarray(rows).data, self.offset + start * self.row_bytes)
            os.fdatasync(descriptor)
        finally:
            os.close(descriptor)


ROWS_AT_ONCE = 4096  # rows copied at a time by save_rows: bounds its memory whatever the array's size


def save_rows(path: Path, source: Path, keep: np.ndarray) -> None:
    """Save the rows `keep` of the uint8 .npy file `source` as an .npy file, atomically, without holding them in
    memory: both files are read and written with plain file I/O (`FileRows`, `RowFile`), never mapped."""
    kept = FileRows(source, keep)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        rows = RowFile.create(temporary, tuple(kept.shape))
        for start in range(0, len(keep), ROWS_AT_ONCE):
            rows.write(start, kept[start : start + ROWS_AT_ONCE].read().numpy())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def link_or_copy(source: Path, target: Path) -> None:
    """`target` becomes a hard link to `source` (no second copy on disk), or a copy where the file system cannot
    link them (another device); atomically either way."""
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
        fsync_path(temporary)
    os.replace(temporary, target)
    fsync_path(target.parent)


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
    try:
        with atomic_open(path) as handle:
            torch.save(checkpoint, handle)
    except RuntimeError as error:  # torch's writer reports a failed write (a full disk, say) as its own error
        if isinstance(error.__context__, OSError):
            raise error.__context__ from None
        raise


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=device, weights_only=True)  # never anything but tensors and numbers
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RunError(f"checkpoint {path} cannot be read as weights ({reason}): it was altered or damaged") from None


# ---------------------------------------------------------------- manifests


_DIGESTS: dict[tuple[int, int, int, int], str] = {}  # a file's sha256 by its identity: hashed once a process


def sha256_file(path: Path) -> str:
    """The file's sha256 (hex), read once per process while its size and modification time stay the same."""
    with open(path, "rb") as handle:
        found = os.fstat(handle.fileno())
        key = (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)  # kept by the commit's rename
        if key not in _DIGESTS:
            digest = hashlib.sha256()
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
            _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


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
    except (RunError, KeyError, TypeError):
        return [f"{manifest_path}: unreadable"]
    problems = []
    present = {path.name for path in directory.iterdir() if path.is_file() and path.name != MANIFEST}
    if not isinstance(recorded, dict):
        return [f"{manifest_path}: unreadable"]
    for name, expected in sorted(recorded.items()):
        path = directory / name
        if not (isinstance(expected, dict) and {"size", "sha256"} <= expected.keys()) or "/" in name:
            problems.append(f"{manifest_path}: its entry for {name!r} is unreadable")
        elif not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != expected["size"] or sha256_file(path) != expected["sha256"]:
            problems.append(f"{path}: content differs from the manifest")
    problems += [f"{directory / name}: not in the manifest" for name in sorted(present - set(recorded))]
    return problems


def verify_run(layout: RunLayout) -> dict[str, list[str]]:
    """Problems of a run's shape ("run"), of its data directory ("data") and of each finished epoch ("epoch N")
    against their manifests; every list is empty when the run is intact."""
    problems = {"run": shape_problems(layout)}
    problems["data"] = verify_manifest(layout.data_dir) if layout.data_dir.is_dir() else []
    for epoch in layout.completed_epochs():
        problems[f"epoch {epoch}"] = verify_manifest(layout.epoch_dir(epoch))
    return problems


def shape_problems(layout: RunLayout) -> list[str]:
    """What is wrong with the run directory's shape: run.json, data/ and epochs/ of the wrong kind, or
    finished epochs that are not 0, 1, 2, ... without a gap."""
    problems = []
    if not layout.run_json.is_file():
        problems.append(f"{layout.run_json}: missing")
    else:
        try:
            read_run_record(layout)
        except RunError as error:
            problems.append(str(error))
    for directory in (layout.data_dir, layout.epochs_dir):
        if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
            problems.append(f"{directory}: not a directory")
    done = layout.completed_epochs()
    if done and not layout.data_dir.is_dir():
        problems.append(f"{layout.data_dir}: missing, although epochs are finished")
    missing = sorted(set(range(done[-1] + 1)) - set(done)) if done else []
    if missing:
        problems.append(f"{layout.epochs_dir}: epochs {', '.join(map(str, missing))} missing before epoch {done[-1]}")
    return problems


def check_run(layout: RunLayout) -> None:
    """Stop with a RunError naming every problem `verify_run` finds, before anything of the run is used.

    Each file is hashed once per process, so checking again after the run's own writes costs little."""
    problems = [problem for part in verify_run(layout).values() for problem in part]
    if problems:
        listed = "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
        raise RunError(
            f"run {layout.run_id!r} was altered or damaged, so it is not used: {listed} "
            f"(`deepcluster verify {layout.run_id}` lists every problem)"
        )


def commit_epoch(layout: RunLayout, epoch: int) -> Path:
    """Seal a staged epoch: write its manifest, make every file and the directory durable, then rename it to
    its final name in one step (durable too), so a committed epoch survives a power loss whole."""
    staging = layout.staging_dir(epoch)
    write_manifest(staging)
    for path in staging.iterdir():
        fsync_path(path)
    fsync_path(staging)
    final = layout.epoch_dir(epoch)
    os.rename(staging, final)
    fsync_path(layout.epochs_dir)
    fsync_path(layout.staging)
    return final


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's contents (a directory's: its entries) to the storage."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def begin_epoch(layout: RunLayout, epoch: int) -> Path:
    """A fresh staging directory for `epoch` (an older partial one is discarded)."""
    staging = layout.staging_dir(epoch)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    layout.epochs_dir.mkdir(exist_ok=True)
    return staging
