"""Feature extraction: the current convnet on every image, eval mode, no augmentation (Sec. 3.1)."""

from __future__ import annotations

import torch

from deepcluster.models import DeepClusterNet, to_unit_range
from deepcluster.progress import progress_bar
from deepcluster.train import autocast


@torch.no_grad()
def extract_features(
    model: DeepClusterNet,
    inputs: torch.Tensor,
    batch_size: int,
    progress: bool | None = None,
    bf16: bool = False,
    trunk: bool = False,
) -> torch.Tensor:
    """Features of all images. inputs: uint8 (N, 1, H, W) on the model's device. Returns float32 (N, D) there.

    progress: show a batch progress bar (None: only on an interactive terminal). bf16: autocast the convnet.
    trunk: the classifier body's output (before any projection head) instead of the clustered features.
    """
    model.eval()
    forward = model.trunk if trunk else model
    dim = model.trunk_dim if trunk else model.feature_dim
    features = torch.empty((len(inputs), dim), dtype=torch.float32, device=inputs.device)
    starts = range(0, len(inputs), batch_size)
    for start in progress_bar(starts, "extract", "batch", progress, leave=False):
        batch = to_unit_range(inputs[start : start + batch_size]).contiguous(memory_format=torch.channels_last)
        with autocast(inputs.device, bf16):
            features[start : start + len(batch)] = forward(batch).float()
    return features
