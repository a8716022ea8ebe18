import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepcluster.sampling import per_cluster_counts, uniform_cluster_sample


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=2, max_size=12).filter(lambda s: sum(s) > 0), seed=st.integers(0, 999)
)
def test_counts_are_balanced_over_non_empty_clusters(sizes, seed):
    sizes_tensor = torch.tensor(sizes)
    counts = per_cluster_counts(sizes_tensor, sum(sizes), torch.Generator().manual_seed(seed))
    non_empty = sizes_tensor > 0
    assert counts.sum() == sum(sizes)
    assert (counts[~non_empty] == 0).all()
    assert counts[non_empty].max() - counts[non_empty].min() <= 1


@settings(max_examples=50, deadline=None)
@given(assignments=st.lists(st.integers(0, 6), min_size=1, max_size=100), seed=st.integers(0, 999))
def test_sample_draws_each_cluster_its_share_from_its_own_members(assignments, seed):
    assignments_tensor = torch.tensor(assignments)
    sample = uniform_cluster_sample(assignments_tensor, 7, torch.Generator().manual_seed(seed))
    assert len(sample) == len(assignments)
    drawn = torch.bincount(assignments_tensor[sample], minlength=7)
    sizes = torch.bincount(assignments_tensor, minlength=7)
    assert (drawn[sizes == 0] == 0).all()
    assert drawn[sizes > 0].max() - drawn[sizes > 0].min() <= 1


def test_small_clusters_are_oversampled_without_repeats_until_exhausted():
    assignments = torch.tensor([0] * 98 + [1] * 2)
    sample = uniform_cluster_sample(assignments, 2, torch.Generator().manual_seed(0))
    from_small = sample[assignments[sample] == 1]
    assert len(from_small) == 50
    assert torch.bincount(from_small - 98).tolist() == [25, 25]
    from_large = sample[assignments[sample] == 0]
    assert len(torch.unique(from_large)) == 50  # drawn without replacement
