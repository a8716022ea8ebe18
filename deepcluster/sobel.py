"""The fixed Sobel front (Caron et al. 2018, Sec. 4, "Preprocessing"): grayscale, then the two
Sobel kernels as two channels, so the network cannot cluster on colour or raw intensity (config
`intensity` passes the grayscale on as a third channel).

`prepare_inputs` is the preprocessing stage: it turns a dataset's uint8 images into the grayscale
uint8 tensor the Sobel front consumes, once per run. `SobelFilter` is the first, frozen layer
of every model.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepcluster.errors import InputError

# ITU-R BT.601 luma weights.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
CHUNK = 4096  # images converted at once: bounds their float32 copies (64 MB at 64 x 64)


def prepare_inputs(images: np.ndarray, image_size: int | None) -> np.ndarray:
    """Grayscale and (optionally) resize images for the Sobel front.

    images: uint8 (N, C, H, W) with C in {1, 3}. Returns uint8 (N, 1, S, S) where S is
    `image_size`, or (N, 1, H, W) when `image_size` is None.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.dtype != np.uint8:
        raise InputError(f"expected uint8 images of shape (N, 1|3, H, W), got {images.dtype} {images.shape}")
    outputs = []
    for part in chunks(images):
        chunk = grayscale(torch.from_numpy(np.array(part)).float())
        if image_size is not None and chunk.shape[-2:] != (image_size, image_size):
            chunk = F.interpolate(chunk, size=(image_size, image_size), mode="bilinear", antialias=True)
        outputs.append(chunk.round().clamp(0, 255).to(torch.uint8).numpy())
    return np.concatenate(outputs)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """float (N, C, H, W) with C in {1, 3} -> (N, 1, H, W): the luma of colour images, grayscale ones as they are."""
    if images.shape[1] == 1:
        return images
    return (images * torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def chunks(images: np.ndarray, size: int = CHUNK) -> Iterator[np.ndarray]:
    """The images `size` at a time (views, in order): bounds the float copies made of them at once."""
    for start in range(0, len(images), size):
        yield images[start : start + size]


class SobelFilter(nn.Module):
    """Fixed Sobel filter: (N, 1, H, W) grayscale in [0, 1] -> (N, 2, H, W) gradients (gx, gy); with `intensity`,
    (N, 3, H, W): the grayscale itself as a third channel."""

    kernels: torch.Tensor

    def __init__(self, intensity: bool = False) -> None:
        super().__init__()
        gx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        identity = torch.zeros(3, 3)
        identity[1, 1] = 1.0
        kernels = torch.stack([gx, gx.t(), identity] if intensity else [gx, gx.t()]).unsqueeze(1)  # (2 or 3, 1, 3, 3)
        # A buffer, not a parameter: never trained, and rebuilt rather than stored in checkpoints.
        self.register_buffer("kernels", kernels, persistent=False)

    @property
    def channels(self) -> int:
        return len(self.kernels)

    def forward(self, grayscale: torch.Tensor) -> torch.Tensor:
        return F.conv2d(grayscale, self.kernels.to(grayscale.dtype), padding=1)
