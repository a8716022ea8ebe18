import numpy as np
import pytest
import torch

from deepcluster.config import Config
from deepcluster.models import ClusterHead, DeepClusterNet
from deepcluster.train import learning_rate, make_optimizer, random_resized_crop_flip, train_epoch


def test_full_crop_without_flip_is_identity():
    images = torch.rand(3, 1, 12, 12)
    out = random_resized_crop_flip(images, torch.Generator().manual_seed(0), scale=(1.0, 1.0), flip=False)
    # aspect ratios other than 1 still crop, so compare only the shape and range
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 1


def test_flip_mirrors_and_crops_are_reproducible():
    images = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    first = random_resized_crop_flip(images, torch.Generator().manual_seed(1), (0.3, 1.0), True)
    again = random_resized_crop_flip(images, torch.Generator().manual_seed(1), (0.3, 1.0), True)
    assert torch.equal(first, again)
    assert not torch.equal(first[0], first[1])  # each image has its own crop


@pytest.mark.parametrize("bf16", [False, True])  # bf16: the CPU twin of the GPU's autocast path
def test_training_lowers_the_loss_on_learnable_pseudo_labels(bf16: bool):
    rng = np.random.default_rng(0)
    array = np.zeros((128, 1, 16, 16), np.uint8)
    labels = torch.arange(128) % 2
    array[labels.numpy() == 0, :, :, 8:] = 255  # class 0: a vertical edge; class 1: blank
    array += rng.integers(0, 20, array.shape, dtype=np.uint8)
    inputs = torch.from_numpy(array)
    config = Config(batch_size=32, lr=0.4, crop_scale=(0.8, 1.0), flip=False)  # 0.05 at batch 32
    model = DeepClusterNet("small", torch.Generator().manual_seed(0))
    head = ClusterHead(model.feature_dim, 2)
    head.reset_parameters(torch.Generator().manual_seed(0))
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(0)
    losses = [
        train_epoch(model, head, optimizer, inputs, labels, torch.randperm(128), config, generator, False, bf16).loss
        for _ in range(4)
    ]
    assert losses[-1] < 0.5 * losses[0]


def test_single_image_last_batch_is_skipped():
    inputs = torch.zeros((5, 1, 8, 8), dtype=torch.uint8)
    config = Config(batch_size=4)
    model = DeepClusterNet("small", torch.Generator().manual_seed(0))
    head = ClusterHead(model.feature_dim, 2)
    result = train_epoch(
        model,
        head,
        make_optimizer(model, config),
        inputs,
        torch.zeros(5, dtype=torch.int64),
        torch.arange(5),
        config,
        torch.Generator(),
        progress=False,
    )
    assert result.batches == 1


def test_learning_rate_scales_linearly_with_the_batch():
    assert learning_rate(Config(lr=0.05, batch_size=256)) == 0.05
    assert learning_rate(Config(lr=0.05, batch_size=1024)) == 0.2
