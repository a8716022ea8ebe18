"""SCAN's self-labelling step before the final grouping (Van Gansbeke et al. 2020, Sec. 2.3).

The run's images are grouped into the groups a user asks for (the run's final grouping, on the convolutional
representation); the images whose nearest neighbours mostly share their group (18 of 20) are taken as labelled by
it; a copy of the convnet, with a linear head on its L2-normalised representation, is trained for a few passes
over those images to predict their groups (at most `max_epoch_samples` of them a pass, as an epoch draws), under
the run's own augmentation and with each group weighing the same. The images are then grouped again with the copy:
an image near a border moves to the group its augmented views are pulled to, which neighbours alone could not decide.
The convnet of the run is left as it was trained; the copy is drawn from the run's seed and the epoch, so the same
call gives the same groups.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from deepcluster.config import Config
from deepcluster.loader import Inputs, gather
from deepcluster.models import DeepClusterNet, to_unit_range
from deepcluster.neighbours import nearest_neighbours
from deepcluster.rng import stage_generator
from deepcluster.train import autocast, configured_crops, learning_rate

CONFIDENT_NEIGHBOURS = 20  # an image is taken as labelled by its group when, of its this many nearest neighbours,
CONFIDENT_SHARE = 0.9  # at least this share are in that group too (18 of 20)
LOGIT_SCALE = 10.0  # the head sees the L2-normalised representation times this (a cosine classifier's scale)


@dataclass(frozen=True)
class SelfLabelled:
    """The self-labelled copy of a convnet and the share of the images it was trained on."""

    model: DeepClusterNet
    confident_share: float


def confident_images(representation: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Indices of the images of which at least CONFIDENT_SHARE of the CONFIDENT_NEIGHBOURS nearest neighbours
    (cosine) share their group."""
    neighbours = nearest_neighbours(representation, min(CONFIDENT_NEIGHBOURS, len(representation) - 1))
    shares = (groups[neighbours] == groups[:, None]).float().mean(dim=1)
    return torch.nonzero(shares >= CONFIDENT_SHARE).flatten()


def self_label(
    model: DeepClusterNet,
    inputs: Inputs,
    config: Config,
    representation: np.ndarray,
    groups: np.ndarray,
    num_groups: int,
    epoch: int,
    bf16: bool = False,
) -> SelfLabelled:
    """A copy of `model` trained for config.self_label passes to predict `groups`, the final grouping into
    `num_groups` of `representation` (the model's L2-normalised representation of `inputs`, uint8 (N, 1, S, S),
    `loader`), on its confident images, at most config.max_epoch_samples of them a pass; the random draws from the
    run's seed and `epoch`. config.self_label = 0: the model itself, untouched."""
    if config.self_label == 0:
        return SelfLabelled(model, 0.0)
    device = next(model.parameters()).device
    groups_of = torch.from_numpy(groups)
    confident = confident_images(torch.from_numpy(representation), groups_of)
    sizes = torch.bincount(groups_of[confident], minlength=num_groups).float()
    weights = (sizes.sum() / (num_groups * sizes.clamp(min=1))).to(device)  # each group weighs the same

    tuned = copy.deepcopy(model)
    generator = stage_generator(config.seed, epoch, "self-label")
    head = torch.nn.Linear(model.representation_dim, num_groups)
    torch.nn.init.normal_(head.weight, 0.0, 0.01, generator=generator)
    torch.nn.init.zeros_(head.bias)
    head = head.to(device)
    parameters = [*tuned.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(
        parameters, lr=learning_rate(config), momentum=config.momentum, weight_decay=config.weight_decay
    )
    augment_generator = stage_generator(config.seed, epoch, "self-label-augment", device)
    targets = groups_of.to(device)
    tuned.train()
    for _ in range(config.self_label):
        order = confident[torch.randperm(len(confident), generator=generator)][: config.max_epoch_samples]
        for batch in order.split(config.batch_size):
            if len(batch) < 2:  # batch norm needs two
                continue
            images = to_unit_range(gather(inputs, batch.to(inputs.device), device))
            crops = configured_crops(images, config, augment_generator, config.crop_scale)
            with autocast(device, bf16):
                represented = tuned.representation(crops.contiguous(memory_format=torch.channels_last))
            logits = head(F.normalize(represented.float(), dim=1) * LOGIT_SCALE)
            loss = F.cross_entropy(logits, targets[batch.to(device)], weight=weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    tuned.eval()
    return SelfLabelled(tuned, len(confident) / len(groups_of))
