"""Random streams seeded from (run seed, epoch, stage): the same for the same triple, independent otherwise."""

import torch

from deepcluster.rng import stage_generator, stage_seed


def test_the_same_triple_gives_the_same_draws():
    first = torch.rand(5, generator=stage_generator(7, 3, "augment"))
    again = torch.rand(5, generator=stage_generator(7, 3, "augment"))
    assert torch.equal(first, again)


def test_each_part_of_the_triple_changes_the_stream():
    seeds = {stage_seed(7, 3, "augment"), stage_seed(8, 3, "augment"), stage_seed(7, 4, "augment")}
    seeds |= {stage_seed(7, 3, "sample"), stage_seed(7, -1, "augment")}
    assert len(seeds) == 5 and all(0 <= seed < 2**63 for seed in seeds)


def test_drawing_leaves_the_global_generator_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    torch.rand(100, generator=stage_generator(1, 0, "kmeans"))
    assert torch.equal(torch.rand(3), expected)
