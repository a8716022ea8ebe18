"""A bare decode-grayscale-resize loop over an image folder: what `bench-scale` measures ingest against.

    python -m benchmarks.decode FOLDER SIZE WORKERS    # prints {"images": ..., "seconds": ...}

PIL decodes each file, converts it to grayscale and resizes it (the shorter side to SIZE, then the centre
crop), in WORKERS spawned processes (here where 1), a chunk of files per task as ingest has them. Nothing
else: no torch (this module imports none, and neither do its workers), nothing written, no report of
unreadable files.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from deepcluster.decode import fit_image  # PIL and numpy only

CHUNK_FILES = 256  # as the input store's chunks (deepcluster.store, which imports torch)


def decode_chunk(directory: Path, files: list[str], size: int) -> int:
    """Decode, grayscale and resize each file as the input store does (`fit_image`); the number of images."""
    for name in files:
        with Image.open(directory / name) as image:
            fit_image(image, size)
    return len(files)


def decode_folder(directory: Path, size: int, workers: int) -> dict[str, float]:
    """Images decoded and the seconds it took (after listing the folder, with the workers' start-up)."""
    found = directory.rglob("*")
    files = sorted(str(path.relative_to(directory)) for path in found if path.is_file() and path.name[0] != ".")
    chunks = [files[start : start + CHUNK_FILES] for start in range(0, len(files), CHUNK_FILES)]
    start = time.perf_counter()
    if workers <= 1:
        images = sum(decode_chunk(directory, chunk, size) for chunk in chunks)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, context) as pool:
            images = sum(pool.map(decode_chunk, [directory] * len(chunks), chunks, [size] * len(chunks)))
    return {"images": images, "seconds": round(time.perf_counter() - start, 3)}


if __name__ == "__main__":
    folder_arg, size_arg, workers_arg = sys.argv[1:4]
    print(json.dumps(decode_folder(Path(folder_arg), int(size_arg), int(workers_arg))))
