"""One ingest of an image folder into a fresh input store, in this process: a line of `bench-scale`.

    python -m benchmarks.ingest FOLDER SIZE WORKERS STORE_DIR LIMIT    # prints the line's JSON (LIMIT 0: all)

The decoding workers it spawns import this module again, as they import the `deepcluster` command's entry
point under the command: so it imports the library (and torch) only where it runs as the main program, and
its workers start as the command's do.
"""

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def ingest(folder: Path, size: int, workers: int, store_dir: Path, limit: int | None) -> dict[str, Any]:
    """Ingest the folder (its first `limit` files) at `size` pixels: seconds and peak memory with the workers'."""
    from deepcluster import store

    listing = store.list_folder(folder)
    if limit is not None:
        listing = store.Listing(listing.directory, listing.files[:limit], f"{listing.digest}-{limit}")
    start = time.perf_counter()
    stored = store.ingest_folder(folder, size, size, store_dir, workers, listing)
    seconds = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "images": stored.num_images,
        "workers": workers,
        "seconds": round(seconds, 3),
        "images_per_second": round(stored.num_images / seconds, 1),
        "peak_rss_mb": round(own, 1),
        "peak_worker_rss_mb": round(workers_peak, 1),
        "store_bytes": stored.inputs.stat().st_size,
    }


if __name__ == "__main__":
    folder_arg, size_arg, workers_arg, store_arg, limit_arg = sys.argv[1:6]
    result = ingest(Path(folder_arg), int(size_arg), int(workers_arg), Path(store_arg), int(limit_arg) or None)
    print(json.dumps(result))
