"""One training epoch on pseudo-labels (Caron et al. 2018, Sec. 3.1 and 4).

Augmentation is done in batch on the device: random resized crops, rotations and horizontal flips,
as one affine resampling per image, then random erasing where asked and brightness and contrast jitter (on by
default), all drawn from an explicit generator.
The learning rate follows an optional linear warm-up and cosine decay, set before every step from the
run's progress.
Across ranks (`distributed`), each batch is split between the ranks and their gradients are averaged
(DistributedDataParallel), so a step is that of the whole batch, but for batch norm's statistics, which
are each rank's own unless config.sync_batch_norm.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deepcluster import distributed
from deepcluster.config import ASPECT_RATIO_RANGE, Config
from deepcluster.loader import Inputs, gather, prefetched
from deepcluster.models import DeepClusterNet, to_unit_range
from deepcluster.progress import progress_bar

ERASE_AREA_RANGE = (0.02, 0.33)  # random erasing's rectangle: its share of the crop's area (Zhong et al. 2020)
ERASE_RATIO_RANGE = (0.3, 1 / 0.3)  # and its aspect ratio
REFERENCE_BATCH_SIZE = 256  # config.lr is the learning rate for batches of this size


@dataclass(frozen=True)
class TrainResult:
    """Mean cross-entropy over the epoch's batches and how many batches were run."""

    loss: float
    batches: int


def augment_crops(
    images: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float],
    flip: bool,
    rotation: float = 0.0,
    among: tuple[int, int] | None = None,
    size: int | None = None,
    erase: float = 0.0,
    ratio: tuple[float, float] = ASPECT_RATIO_RANGE,
    jitter: float = 0.0,
) -> torch.Tensor:
    """Augment float images (N, C, H, W): crop a random area fraction in `scale` with aspect ratio (width /
    height) in `ratio`, rotate it by up to +-`rotation` degrees, resize to `size` x `size` (default: back to
    (H, W)), and mirror half of them. generator: on the images' device. Pixels from outside the image are
    reflections. Then, with probability `erase`, black out a random rectangle of each crop (random erasing,
    Zhong et al. 2020: ERASE_AREA_RANGE of its area, aspect ratio in ERASE_RATIO_RANGE), so that no one part of
    an image, its outline included, is always there to be learned from. Then, with `jitter`, scale each crop's
    brightness and then its contrast (about its mean) by factors drawn uniformly from 1 +- `jitter`, clipped to
    [0, 1] after each: the grayscale part of the colour distortion of SimCLR and DeepCluster-v2. The Sobel front
    drops a constant offset but not a scale: a garment's edges are as strong as it is bright against its
    background, which jitter keeps from being learned as what tells images apart. An erased rectangle stays black.

    among: (offset, total) when the images are rows offset..offset+N of a batch of `total`: the random draws
    are made for the whole batch and these rows take theirs, so ranks that split a batch augment it as one
    process does.
    """
    num_images = len(images)
    device = images.device
    offset, total = among if among is not None else (0, num_images)

    def draw() -> torch.Tensor:
        return torch.rand(total, generator=generator, device=device)[offset : offset + num_images]

    def uniform(low: float, high: float) -> torch.Tensor:
        return draw() * (high - low) + low

    def box(areas: tuple[float, float], ratios: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """(width, height) of a random box, as fractions of the side: an area fraction in `areas`, an aspect ratio
        (width / height) in `ratios`, uniform in its logarithm."""
        area = uniform(*areas)
        log_ratio = uniform(math.log(ratios[0]), math.log(ratios[1]))
        return (area * log_ratio.exp()).sqrt().clamp(max=1.0), (area / log_ratio.exp()).sqrt().clamp(max=1.0)

    width, height = box(scale, ratio)
    center_x = uniform(-1.0, 1.0) * (1 - width)
    center_y = uniform(-1.0, 1.0) * (1 - height)
    mirror = draw() < 0.5
    sign = torch.where(mirror, -1.0, 1.0) if flip else torch.ones(num_images, device=device)
    angle = uniform(-math.radians(rotation), math.radians(rotation))
    cos, sin = angle.cos(), angle.sin()
    # Output (x, y) samples the input at diag(width * sign, height) @ R(angle) @ (x, y) + center.
    theta = torch.zeros((num_images, 2, 3), device=device)
    theta[:, 0, 0] = width * sign * cos
    theta[:, 0, 1] = -width * sign * sin
    theta[:, 0, 2] = center_x
    theta[:, 1, 0] = height * sin
    theta[:, 1, 1] = height * cos
    theta[:, 1, 2] = center_y
    out_shape = list(images.shape[:2]) + ([size, size] if size is not None else list(images.shape[2:]))
    grid = F.affine_grid(theta, out_shape, align_corners=False)
    crops = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # Each option draws only when on, erasing first: the crops of runs without them stay as they were.
    mask = None
    if erase > 0:
        box_width, box_height = box(ERASE_AREA_RANGE, ERASE_RATIO_RANGE)
        left, top = draw() * (1 - box_width), draw() * (1 - box_height)
        erased = draw() < erase

        def inside(start: torch.Tensor, extent: torch.Tensor, pixels: int) -> torch.Tensor:
            centres = (torch.arange(pixels, device=device) + 0.5) / pixels
            return (centres >= start[:, None]) & (centres < (start + extent)[:, None])  # (N, pixels)

        rows, columns = inside(top, box_height, crops.shape[2]), inside(left, box_width, crops.shape[3])
        mask = (erased[:, None, None] & rows[:, :, None] & columns[:, None, :])[:, None]
    if jitter > 0:
        brightness = uniform(1 - jitter, 1 + jitter)[:, None, None, None]
        contrast = uniform(1 - jitter, 1 + jitter)[:, None, None, None]
        crops = (crops * brightness).clamp(0.0, 1.0)
        mean = crops.mean(dim=(1, 2, 3), keepdim=True)
        crops = ((crops - mean) * contrast + mean).clamp(0.0, 1.0)
    return crops if mask is None else crops.masked_fill(mask, 0.0)


def learning_rate(config: Config) -> float:
    """config.lr scaled linearly from batches of 256 to config.batch_size (Goyal et al. 2017)."""
    return config.lr * config.batch_size / REFERENCE_BATCH_SIZE


def scheduled_learning_rate(config: Config, epochs_done: float) -> float:
    """The learning rate after `epochs_done` (fractional) epochs of the run: linear warm-up from 0 over
    config.warmup_epochs, then constant or cosine decay to 0 at config.epochs."""
    peak = learning_rate(config)
    if epochs_done < config.warmup_epochs:
        return peak * epochs_done / config.warmup_epochs
    if config.lr_schedule == "constant":
        return peak
    decay_epochs = max(1, config.epochs - config.warmup_epochs)
    fraction = min(1.0, (epochs_done - config.warmup_epochs) / decay_epochs)
    return peak * 0.5 * (1 + math.cos(math.pi * fraction))


def instance_loss(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """Instance discrimination between two views (InfoNCE / NT-Xent, Chen et al. 2020; the instance term
    of Prototypical Contrastive Learning, Li et al. 2021): each of the 2B L2-normalised embeddings (B, D)
    must pick its other view among the other 2B - 1 by cosine similarity over `temperature`."""
    embeddings = torch.cat([first, second])
    logits = embeddings @ embeddings.T / temperature
    logits.fill_diagonal_(float("-inf"))
    count = len(first)
    targets = torch.cat([torch.arange(count, 2 * count), torch.arange(count)]).to(logits.device)
    return F.cross_entropy(logits, targets)


def make_optimizer(model: DeepClusterNet, config: Config) -> torch.optim.SGD:
    """The convnet's optimizer, kept across epochs (its state is checkpointed)."""
    return torch.optim.SGD(
        model.parameters(), lr=learning_rate(config), momentum=config.momentum, weight_decay=config.weight_decay
    )


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager[object]:
    """bf16 autocast on `device` when asked, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


class Trainee(nn.Module):
    """The convnet and the epoch's heads as one module (what DistributedDataParallel wraps): crops, one batch per
    resolution -> the convnet's features of all of them in that order (float32) and each head's logits. Each
    resolution is its own forward pass, with its own batch-norm statistics (as in DeepCluster-v2's multi-crop).
    bf16: autocast the convnet."""

    def __init__(self, model: DeepClusterNet, heads: list[nn.Module], bf16: bool) -> None:
        super().__init__()
        self.model, self.heads, self.bf16 = model, nn.ModuleList(heads), bf16

    def forward(self, crops: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with autocast(crops[0].device, self.bf16):
            features = torch.cat([self.model(each.contiguous(memory_format=torch.channels_last)) for each in crops])
        features = features.float()
        return features, [head(features) for head in self.heads]


def configured_crops(
    images: torch.Tensor,
    config: Config,
    generator: torch.Generator,
    scale: tuple[float, float],
    among: tuple[int, int] | None = None,
    size: int | None = None,
) -> torch.Tensor:
    """augment_crops under the run's augmentation options (config: mirroring, rotation, aspect ratio, erasing,
    jitter), crops of an area fraction in `scale`: the one place a run's options reach the augmentation, for
    training and for self-labelling alike."""
    return augment_crops(
        images,
        generator,
        scale,
        config.flip,
        config.rotation,
        among,
        size,
        config.erase,
        config.crop_ratio,
        config.jitter,
    )


def training_crops(
    images: torch.Tensor, config: Config, generator: torch.Generator, among: tuple[int, int]
) -> list[torch.Tensor]:
    """The crops a step trains on, one batch per resolution: config.views views of every image at its own side,
    then config.small_crops crops of config.small_crop_scale at the small side, if any (configured_crops; among:
    where `images` lie in the whole batch)."""

    def crops(count: int, scale: tuple[float, float], size: int | None = None) -> torch.Tensor:
        return torch.cat([configured_crops(images, config, generator, scale, among, size) for _ in range(count)])

    batches = [crops(config.views, config.crop_scale)]
    if config.small_crops:
        small = config.small_crop_size(images.shape[-1])
        batches.append(crops(config.small_crops, config.small_crop_scale, small))
    return batches


def rank_batches(sample: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, int, int]]:
    """This rank's part of each batch of `sample`, with where it lies in the batch: (indices, offset, batch size).
    A batch too small to give every rank two images is skipped by all ranks (batch norm needs two), so every rank
    runs the same steps."""
    parts = []
    for batch in sample.split(batch_size):
        if len(batch) >= 2 * distributed.world_size():
            mine = distributed.shard(len(batch))
            parts.append((batch[mine], mine.start, len(batch)))
    return parts


def train_epoch(
    model: DeepClusterNet,
    heads: list[nn.Module],
    optimizer: torch.optim.Optimizer,
    inputs: Inputs,
    pseudo_labels: list[torch.Tensor],
    sample: torch.Tensor,
    config: Config,
    epoch: int,
    generator: torch.Generator,
    progress: bool | None = None,
    bf16: bool = False,
) -> TrainResult:
    """Train convnet + the epoch's heads (one per clustering) for one pass over `sample`.

    inputs: uint8 (N, 1, H, W) on the model's device or on the host (`loader`); pseudo_labels: per head, int64 (N,) cluster ids or float (N, k) soft targets;
    sample: int64 (M,) indices (already shuffled). The loss is the mean over heads of the cross-entropy.
    Nothing in the batch loop waits for the device. Heads with parameters get their own SGD without
    momentum, as in the reference code. A final batch of one image is skipped (batch norm needs two).
    bf16: autocast the forward pass. The learning rate of step s is scheduled_learning_rate(epoch + s / steps).
    """
    device = next(model.parameters()).device
    model.train()
    trainee = distributed.synchronized(Trainee(model, heads, bf16), config.sync_batch_norm)
    head_parameters = [parameter for head in heads for parameter in head.parameters()]
    optimizers = [optimizer]
    if head_parameters:
        optimizers.append(torch.optim.SGD(head_parameters, lr=learning_rate(config), weight_decay=config.weight_decay))
    pseudo_labels = [labels.to(device) for labels in pseudo_labels]
    total_loss = torch.zeros((), device=device)
    mine = rank_batches(sample, config.batch_size)
    batches = [batch.to(device) for batch, _, _ in mine]
    streamed = inputs.device != device
    where = [batch.to(inputs.device) for batch, _, _ in mine]
    gathered = prefetched(where, lambda batch: gather(inputs, batch, device), ahead=streamed)
    steps = progress_bar(batches, "train", "batch", progress, leave=False)
    for step, (batch, rows, (_, offset, total)) in enumerate(zip(steps, gathered, mine)):
        rate = scheduled_learning_rate(config, epoch + step / len(batches))
        features, logits = trainee(training_crops(to_unit_range(rows), config, generator, (offset, total)))
        losses = [
            F.cross_entropy(each, torch.cat([labels[batch]] * (config.views + config.small_crops)))
            for each, labels in zip(logits, pseudo_labels, strict=True)
        ]
        loss = torch.stack(losses).mean()
        if config.instance_weight > 0:
            first, second = F.normalize(features[: 2 * len(batch)], dim=1).chunk(2)
            loss = loss + config.instance_weight * instance_loss(first, second, config.instance_temperature)
        for each in optimizers:
            each.zero_grad(set_to_none=True)
            for group in each.param_groups:
                group["lr"] = rate
        loss.backward()
        for each in optimizers:
            each.step()
        total_loss += loss.detach()
    mean_loss = distributed.all_reduce_sum(total_loss) / distributed.world_size()  # the same on every rank
    return TrainResult(loss=float(mean_loss) / max(1, len(batches)), batches=len(batches))
