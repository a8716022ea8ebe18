"""Image files decoded into the network's grayscale inputs: what the input store's worker processes run.

This module imports numpy and PIL only, never torch, and neither does the `deepcluster` command's entry
point (`deepcluster.__main__`): a spawned worker imports its parent's main module and the module of the
function it runs, so each decoding worker starts in a fraction of a second instead of the seconds torch's
import takes. `tests/test_layering.py` checks it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def decode_chunk(directory: Path, files: list[str], size: int) -> tuple[np.ndarray, list[dict[str, str]]]:
    """The images of `files` as uint8 (n, 1, size, size) (zeros where unreadable) and the unreadable ones."""
    images = np.zeros((len(files), 1, size, size), dtype=np.uint8)
    unreadable = []
    for row, name in enumerate(files):
        try:
            with Image.open(directory / name) as image:
                images[row] = fit_image(image, size)
        except (OSError, ValueError) as error:
            unreadable.append({"path": name, "error": f"{error.__class__.__name__}: {error}"})
    return images, unreadable


def fit_image(image: Image.Image, size: int) -> np.ndarray:
    """One image as the network's grayscale input, uint8 (1, size, size): its luma (PIL's "L", the weights of
    `sobel.LUMA_WEIGHTS` in fixed point), the shorter side resized to `size` with PIL's bilinear filter
    (antialiased where it shrinks), then the centre `size` x `size` crop. Within one grey level of torch's
    antialiased bilinear resize of the float luma (`prepare_inputs`), at the cost of a bare PIL loop."""
    gray = image.convert("L")
    if gray.size != (size, size):
        scale = size / min(gray.size)
        width, height = max(size, round(gray.width * scale)), max(size, round(gray.height * scale))
        left, top = (width - size) // 2, (height - size) // 2
        gray = gray.resize((width, height), Image.Resampling.BILINEAR).crop((left, top, left + size, top + size))
    return np.asarray(gray)[None]


def chunk_sizes(directory: Path, files: list[str]) -> set[tuple[int, int]]:
    """(height, width) of the readable images of one chunk, from their headers."""
    sizes = set()
    for name in files:
        try:
            with Image.open(directory / name) as image:
                sizes.add((image.height, image.width))
        except (OSError, ValueError):
            continue  # reported by the decoding
    return sizes
