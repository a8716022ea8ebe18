"""Feature extraction: the current convnet on every image, eval mode, no augmentation (Sec. 3.1)."""

from __future__ import annotations

import numpy as np
import torch

from deepcluster.models import DeepClusterNet, to_unit_range
from deepcluster.progress import progress_bar


@torch.no_grad()
def extract_features(
    model: DeepClusterNet, inputs: np.ndarray, batch_size: int, device: torch.device, progress: bool | None = None
) -> torch.Tensor:
    """Features of all images. inputs: uint8 (N, 1, H, W). Returns float32 (N, D) on `device`.

    progress: show a batch progress bar (None: only on an interactive terminal).
    """
    model.eval()
    features = torch.empty((len(inputs), model.feature_dim), dtype=torch.float32, device=device)
    starts = range(0, len(inputs), batch_size)
    for start in progress_bar(starts, "extract", "batch", progress, leave=False):
        batch = torch.from_numpy(np.array(inputs[start : start + batch_size])).to(device)
        features[start : start + len(batch)] = model(to_unit_range(batch)).float()
    return features
