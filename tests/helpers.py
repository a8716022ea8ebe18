"""Helpers shared by the tests: tiny configs and runs, image folders, IDX files."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from deepcluster.config import Config

ROOT = Path(__file__).resolve().parent.parent  # the repository


def tiny_config(**overrides: object) -> Config:
    """300 sample images, 10 clusters, one pass over them an epoch, otherwise the defaults: an epoch takes about a
    second on CPU."""
    values: dict[str, object] = {
        "dataset": "fashion-mnist-sample",
        "limit": 300,
        "epochs": 2,
        "num_clusters": 10,
        "min_epoch_samples": 0,  # one pass over the 300 images an epoch
        "batch_size": 64,
        "device": "cpu",
        "seed": 7,
    }
    values.update(overrides)
    return Config.model_validate(values)


def write_images(folder: Path, size: int, mode: str, count: int = 4) -> None:
    """`count` random PNG images of size x size, mode "L" or "RGB", in a new folder (no labels)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        shape = (size, size, 3) if mode == "RGB" else (size, size)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"image{index}.png")


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool = False) -> Path:
    payload = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape) + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def training_span(runs_dir: Path, run_id: str) -> tuple[int, int]:
    """When a finished run's flow run held its device: from its record (run.json) to its report, in ns."""
    root = runs_dir / run_id
    return (root / "run.json").stat().st_mtime_ns, (root / "report" / "index.html").stat().st_mtime_ns


CLI_ARGS = [
    "run",
    "--limit",
    "300",
    "--epochs",
    "3",
    "--k",
    "10",
    "--batch-size",
    "64",
    "--min-epoch-samples",
    "0",
    "--device",
    "cpu",
    "--seed",
    "7",
    "--no-progress",
]


def free_port() -> int:
    """A TCP port free on this machine right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def on_ranks(function: Callable[..., None], ranks: int, *args: object) -> None:
    """function(*args) in `ranks` new processes joined in one gloo process group (as torchrun starts them)."""
    import torch.multiprocessing

    port = free_port()
    torch.multiprocessing.spawn(_rank_main, (function, ranks, port, args), nprocs=ranks)


def _rank_main(rank: int, function: Callable[..., None], ranks: int, port: int, args: tuple[object, ...]) -> None:
    import os

    import torch

    from deepcluster import distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.start(torch.device("cpu"))
    try:
        function(*args)
    finally:
        distributed.stop()
