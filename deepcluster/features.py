"""Feature extraction: the current convnet on every image, eval mode, no augmentation (Sec. 3.1)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from deepcluster.loader import Inputs, prefetched, to_device
from deepcluster.models import DeepClusterNet, to_unit_range
from deepcluster.progress import progress_bar
from deepcluster.train import autocast


def extract_features(
    model: DeepClusterNet,
    inputs: Inputs,
    batch_size: int,
    progress: bool | None = None,
    bf16: bool = False,
) -> torch.Tensor:
    """Features of all images. inputs: uint8 (N, 1, H, W) on the model's device or on the host (`loader`). Returns
    float32 (N, D) on the model's device.

    progress: show a batch progress bar (None: only on an interactive terminal). bf16: autocast the convnet.
    """
    return _extract(model, inputs, batch_size, progress, bf16, lambda batch: (model(batch),), (model.feature_dim,))[0]


def representation_features(model: DeepClusterNet, inputs: Inputs, batch_size: int, bf16: bool = False) -> torch.Tensor:
    """The L2-normalised convolutional representation (N, model.representation_dim) of every image: what
    kNN, the linear probe and the final grouping work on."""
    forward, dims = lambda batch: (model.representation(batch),), (model.representation_dim,)
    return torch.nn.functional.normalize(_extract(model, inputs, batch_size, False, bf16, forward, dims)[0], dim=1)


def features_and_representation(
    model: DeepClusterNet, inputs: Inputs, batch_size: int, progress: bool | None = None, bf16: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """`extract_features` and `representation_features` of the same images, from one pass over them."""
    dims = (model.feature_dim, model.representation_dim)
    features, representation = _extract(
        model, inputs, batch_size, progress, bf16, model.features_and_representation, dims
    )
    return features, torch.nn.functional.normalize(representation, dim=1)


@torch.no_grad()
def _extract(
    model: DeepClusterNet,
    inputs: Inputs,
    batch_size: int,
    progress: bool | None,
    bf16: bool,
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    dims: tuple[int, ...],
) -> tuple[torch.Tensor, ...]:
    """forward's outputs of all images in batches, eval mode: float32 (N, dim) tensors on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    outputs = tuple(torch.empty((len(inputs), dim), dtype=torch.float32, device=device) for dim in dims)
    starts = range(0, len(inputs), batch_size)
    streamed = inputs.device != device
    batches = prefetched(starts, lambda start: to_device(inputs[start : start + batch_size], device), ahead=streamed)
    for start, rows in zip(progress_bar(starts, "extract", "batch", progress, leave=False), batches, strict=True):
        batch = to_unit_range(rows).contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            for output, computed in zip(outputs, forward(batch), strict=True):
                output[start : start + len(batch)] = computed.float()
    return outputs
