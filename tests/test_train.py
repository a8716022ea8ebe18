import numpy as np
import pytest
import torch

from deepcluster.config import Config
from deepcluster.models import ClusterHead, DeepClusterNet
from deepcluster.train import (
    augment_crops,
    instance_loss,
    learning_rate,
    make_optimizer,
    scheduled_learning_rate,
    train_epoch,
)


def test_a_full_square_crop_is_the_image_and_flip_mirrors_it():
    images = torch.rand(64, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    square = (1.0, 1.0)  # square crops: the whole image at scale 1
    same = augment_crops(images, torch.Generator().manual_seed(0), scale=(1.0, 1.0), flip=False, ratio=square)
    assert torch.allclose(same, images, atol=1e-5)
    out = augment_crops(images, torch.Generator().manual_seed(0), scale=(1.0, 1.0), flip=True, ratio=square)
    mirrored = [not torch.allclose(o, i, atol=1e-5) for o, i in zip(out, images, strict=True)]
    assert 10 < sum(mirrored) < 54  # about half of them
    for o, i, flipped in zip(out, images, mirrored, strict=True):
        assert torch.allclose(o, i.flip(-1) if flipped else i, atol=1e-5)


def test_the_crops_aspect_ratio_stays_in_its_range():
    # Channel 0 holds each pixel's column, channel 1 its row: bilinear sampling keeps both linear, so from one
    # pixel of a crop to the next its column moves by the crop's width as a fraction of the image's, and its row
    # by the height (the median step: the image's border reflects).
    side = 16
    ramp = torch.arange(side, dtype=torch.float32)
    images = torch.stack([ramp.expand(side, side), ramp[:, None].expand(side, side)]).repeat(500, 1, 1, 1)

    def ratios(ratio: tuple[float, float]) -> torch.Tensor:
        crops = augment_crops(images, torch.Generator().manual_seed(3), (0.25, 0.25), False, ratio=ratio)
        width = crops[:, 0].diff(dim=-1).flatten(1).median(dim=1).values
        height = crops[:, 1].diff(dim=-2).flatten(1).median(dim=1).values
        assert torch.allclose(width * height, torch.full_like(width, 0.25), atol=1e-4)  # the area asked for
        return width / height

    default = ratios((3 / 4, 4 / 3))
    assert default.min() > 3 / 4 - 1e-4 and default.max() < 4 / 3 + 1e-4
    wide = ratios((1 / 3, 3.0))
    assert wide.min() > 1 / 3 - 1e-4 and wide.max() < 3 + 1e-4
    assert (wide < 3 / 4).float().mean() > 0.2 and (wide > 4 / 3).float().mean() > 0.2  # log-uniform: ~0.37 each


def test_flip_mirrors_and_crops_are_reproducible():
    images = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    first = augment_crops(images, torch.Generator().manual_seed(1), (0.3, 1.0), True)
    again = augment_crops(images, torch.Generator().manual_seed(1), (0.3, 1.0), True)
    assert torch.equal(first, again)
    assert not torch.equal(first[0], first[1])  # each image has its own crop


def test_instance_loss_rewards_finding_the_other_view():
    embeddings = torch.eye(8)[:6]  # 6 distinct unit vectors
    matched = instance_loss(embeddings, embeddings.clone(), temperature=0.1)
    mismatched = instance_loss(embeddings, embeddings.roll(1, dims=0), temperature=0.1)
    assert matched < 0.01 and mismatched > 5


def test_small_crops_have_the_asked_side_and_come_from_their_image():
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 16, 16)  # each image one grey level
    crops = augment_crops(images, torch.Generator().manual_seed(2), (0.2, 0.6), True, 15.0, size=8)
    assert crops.shape == (4, 1, 8, 8)
    assert torch.allclose(crops, images[:, :, :8, :8])


PLAIN = {}
TWO_VIEWS = {"views": 2}
MULTI_CROP = {"views": 2, "small_crops": 2}  # 8-pixel small crops of 16-pixel images


@pytest.mark.parametrize(
    ("bf16", "options", "soft"),
    [
        (False, PLAIN, False),
        (True, PLAIN, False),
        (False, TWO_VIEWS, False),
        (False, PLAIN, True),
        (False, MULTI_CROP, False),
    ],
)  # bf16: the CPU twin of the GPU's autocast path; soft: targets shared with neighbours
def test_training_lowers_the_loss_on_learnable_pseudo_labels(bf16: bool, options: dict, soft: bool):
    rng = np.random.default_rng(0)
    array = np.zeros((128, 1, 16, 16), np.uint8)
    labels = torch.arange(128) % 2
    array[labels.numpy() == 0, :, :, 8:] = 255  # class 0: a vertical edge; class 1: blank
    array += rng.integers(0, 20, array.shape, dtype=np.uint8)
    inputs = torch.from_numpy(array)
    config = Config(batch_size=32, lr=0.4, crop_scale=(0.8, 1.0), flip=False, **options)  # 0.05 at batch 32
    model = DeepClusterNet("small", torch.Generator().manual_seed(0))
    head = ClusterHead(model.feature_dim, 2)
    head.reset_parameters(torch.Generator().manual_seed(0))
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(0)
    targets = torch.nn.functional.one_hot(labels).float() * 0.8 + 0.1 if soft else labels
    losses = [
        train_epoch(
            model, [head], optimizer, inputs, [targets], torch.randperm(128), config, epoch, generator, False, bf16
        ).loss
        for epoch in range(4)
    ]
    floor = -(targets * targets.log()).sum(dim=1).mean() if soft else 0  # the targets' entropy: the least loss
    assert losses[-1] - floor < 0.5 * (losses[0] - floor)


def test_single_image_last_batch_is_skipped():
    inputs = torch.zeros((5, 1, 8, 8), dtype=torch.uint8)
    config = Config(batch_size=4)
    model = DeepClusterNet("small", torch.Generator().manual_seed(0))
    head = ClusterHead(model.feature_dim, 2)
    result = train_epoch(
        model,
        [head],
        make_optimizer(model, config),
        inputs,
        torch.zeros((1, 5), dtype=torch.int64),
        torch.arange(5),
        config,
        0,
        torch.Generator(),
        progress=False,
    )
    assert result.batches == 1


def test_learning_rate_scales_linearly_with_the_batch():
    assert learning_rate(Config(lr=0.05, batch_size=256)) == 0.05
    assert learning_rate(Config(lr=0.05, batch_size=1024)) == 0.2


def test_rotation_is_drawn_after_the_crop_and_reproducible():
    images = torch.rand(32, 1, 12, 12)

    def augment(rotation: float) -> torch.Tensor:
        return augment_crops(images, torch.Generator().manual_seed(3), (0.5, 1.0), True, rotation)

    unrotated = augment_crops(images, torch.Generator().manual_seed(3), (0.5, 1.0), True)
    assert torch.equal(augment(0.0), unrotated)  # rotation 0 keeps the crops of runs without rotation
    assert torch.equal(augment(30.0), augment(30.0)) and not torch.allclose(augment(30.0), unrotated)


def test_random_erasing_blacks_out_one_rectangle_of_the_asked_share_of_crops():
    images = torch.ones(400, 1, 28, 28)
    crops = augment_crops(images, torch.Generator().manual_seed(5), (0.6, 1.0), True, 15.0, erase=0.5)
    erased = 0
    for crop in crops[:, 0]:
        black = crop == 0
        if not black.any():
            continue
        erased += 1
        rows, columns = black.any(1).nonzero().flatten(), black.any(0).nonzero().flatten()
        assert torch.equal(rows, torch.arange(rows[0], rows[-1] + 1))  # one block of rows and of columns
        assert torch.equal(columns, torch.arange(columns[0], columns[-1] + 1))
        assert black.sum() == len(rows) * len(columns)  # and all of it black: a rectangle
        assert 0.01 < black.float().mean() < 0.4  # about 2-33% of the crop
    assert 160 < erased < 240  # about half the crops
    unerased = augment_crops(images, torch.Generator().manual_seed(5), (0.6, 1.0), True, 15.0)
    assert torch.equal(
        augment_crops(images, torch.Generator().manual_seed(5), (0.6, 1.0), True, 15.0, erase=0.0), unerased
    )
    assert torch.equal(crops[crops != 0], unerased[crops != 0])  # erasing changes nothing else


def test_jitter_scales_each_crops_brightness_and_contrast_and_nothing_else():
    # values in 0.25-0.5 are never clipped by factors of 0.5-1.5: each jittered crop is then an affine map of the crop
    images = 0.25 + 0.25 * torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    plain = augment_crops(images, torch.Generator().manual_seed(6), (0.6, 1.0), True, 15.0)
    jittered = augment_crops(images, torch.Generator().manual_seed(6), (0.6, 1.0), True, 15.0, jitter=0.5)
    assert torch.equal(
        augment_crops(images, torch.Generator().manual_seed(6), (0.6, 1.0), True, 15.0, jitter=0.0), plain
    )
    flat_plain, flat_jittered = plain.flatten(1), jittered.flatten(1)
    centred = flat_plain - flat_plain.mean(1, keepdim=True)
    slopes = (centred * flat_jittered).sum(1) / (centred * centred).sum(1)
    intercepts = flat_jittered.mean(1) - slopes * flat_plain.mean(1)
    torch.testing.assert_close(slopes[:, None] * flat_plain + intercepts[:, None], flat_jittered)  # same geometry
    brightness = flat_jittered.mean(1) / flat_plain.mean(1)  # contrast keeps the mean
    assert 0.5 <= brightness.min() < 0.6 and 1.4 < brightness.max() <= 1.5
    contrast = slopes / brightness
    assert 0.5 <= contrast.min() < 0.6 and 1.4 < contrast.max() <= 1.5
    bright = augment_crops(
        torch.ones(50, 1, 28, 28), torch.Generator().manual_seed(6), (0.6, 1.0), True, 15.0, jitter=0.9
    )
    assert bright.min() >= 0 and bright.max() <= 1  # clipped to the images' range
    erased = augment_crops(
        torch.ones(50, 1, 28, 28), torch.Generator().manual_seed(6), (0.6, 1.0), True, 15.0, erase=1.0, jitter=0.5
    )
    unjittered = augment_crops(
        torch.ones(50, 1, 28, 28), torch.Generator().manual_seed(6), (0.6, 1.0), True, 15.0, erase=1.0
    )
    assert torch.equal(erased == 0, unjittered == 0)  # the same rectangles, still black


def test_warmup_then_cosine_schedule():
    config = Config(lr=0.1, batch_size=256, epochs=10, warmup_epochs=2, lr_schedule="cosine")  # lr as given
    rates = [scheduled_learning_rate(config, epoch) for epoch in (0, 1, 2, 6, 10)]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.05, 0.0])
    constant = Config(lr=0.1, batch_size=256, epochs=10, warmup_epochs=2)
    assert scheduled_learning_rate(constant, 1) == pytest.approx(0.05) and scheduled_learning_rate(constant, 9) == 0.1


def test_train_epoch_sets_the_scheduled_rate_before_every_step():
    config = Config(batch_size=4, epochs=4, warmup_epochs=2)
    model = DeepClusterNet("small", torch.Generator().manual_seed(0))
    optimizer = make_optimizer(model, config)
    inputs = torch.zeros((8, 1, 8, 8), dtype=torch.uint8)
    labels = torch.zeros((1, 8), dtype=torch.int64)
    train_epoch(model, [ClusterHead(512, 2)], optimizer, inputs, labels, torch.arange(8), config, 1, torch.Generator())
    assert optimizer.param_groups[0]["lr"] == pytest.approx(learning_rate(config) * 1.5 / 2)  # step 2 of 2 in epoch 1


def test_parts_of_a_batch_are_augmented_as_the_whole_batch():
    """Ranks that split a batch draw its augmentations as one process does."""
    images = torch.rand(10, 2, 12, 12, generator=torch.Generator().manual_seed(0))
    for erase, jitter in ((0.0, 0.0), (0.5, 0.0), (0.5, 0.5)):
        whole = augment_crops(
            images, torch.Generator().manual_seed(4), (0.5, 1.0), True, 20.0, erase=erase, jitter=jitter
        )
        parts = [
            augment_crops(
                images[start:stop],
                torch.Generator().manual_seed(4),
                (0.5, 1.0),
                True,
                20.0,
                (start, 10),
                erase=erase,
                jitter=jitter,
            )
            for start, stop in ((0, 3), (3, 10))
        ]
        torch.testing.assert_close(torch.cat(parts), whole)
