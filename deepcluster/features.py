"""Feature extraction: the current convnet on every image, eval mode, no augmentation (Sec. 3.1)."""

from __future__ import annotations

import torch

from deepcluster.loader import Inputs, prefetched, to_device
from deepcluster.models import DeepClusterNet, to_unit_range
from deepcluster.progress import progress_bar
from deepcluster.train import autocast


@torch.no_grad()
def extract_features(
    model: DeepClusterNet,
    inputs: Inputs,
    batch_size: int,
    progress: bool | None = None,
    bf16: bool = False,
    representation: bool = False,
) -> torch.Tensor:
    """Features of all images. inputs: uint8 (N, 1, H, W) on the model's device or on the host (`loader`). Returns
    float32 (N, D) on the model's device.

    progress: show a batch progress bar (None: only on an interactive terminal). bf16: autocast the convnet.
    representation: the convolutional representation (`DeepClusterNet.representation`) instead of the clustered
    features.
    """
    model.eval()
    device = next(model.parameters()).device
    forward = model.representation if representation else model
    dim = model.representation_dim if representation else model.feature_dim
    features = torch.empty((len(inputs), dim), dtype=torch.float32, device=device)
    starts = range(0, len(inputs), batch_size)
    streamed = inputs.device != device
    batches = prefetched(starts, lambda start: to_device(inputs[start : start + batch_size], device), ahead=streamed)
    for start, rows in zip(progress_bar(starts, "extract", "batch", progress, leave=False), batches, strict=True):
        batch = to_unit_range(rows).contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            features[start : start + len(batch)] = forward(batch).float()
    return features


def representation_features(model: DeepClusterNet, inputs: Inputs, batch_size: int, bf16: bool = False) -> torch.Tensor:
    """The L2-normalised convolutional representation (N, model.representation_dim) of every image: what
    kNN, the linear probe and the final grouping work on."""
    features = extract_features(model, inputs, batch_size, False, bf16, representation=True)
    return torch.nn.functional.normalize(features, dim=1)
