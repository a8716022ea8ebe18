import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepcluster.metrics import accuracy, ari, cluster_size_stats, contingency, largest_over_fair_share, nmi

labelings = st.lists(st.integers(0, 4), min_size=2, max_size=60)


@settings(max_examples=60, deadline=None)
@given(labels=labelings, clusters_seed=st.integers(0, 999), permutation_seed=st.integers(0, 999))
def test_nmi_and_acc_invariant_to_relabelling(labels, clusters_seed, permutation_seed):
    labels = np.array(labels)
    clusters = np.random.default_rng(clusters_seed).integers(0, 5, len(labels))
    relabel = np.random.default_rng(permutation_seed).permutation(5)
    assert nmi(labels, clusters) == pytest.approx(nmi(labels, relabel[clusters]))
    assert accuracy(labels, clusters) == pytest.approx(accuracy(labels, relabel[clusters]))
    assert ari(labels, clusters) == pytest.approx(ari(labels, relabel[clusters]))


def test_known_values():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert accuracy(labels, np.array([5, 5, 3, 3, 9, 9])) == 1.0
    assert nmi(labels, np.array([5, 5, 3, 3, 9, 9])) == pytest.approx(1.0)
    assert accuracy(labels, np.array([0, 0, 0, 0, 0, 0])) == pytest.approx(2 / 6)
    assert accuracy(labels, np.array([0, 1, 2, 3, 4, 5])) == pytest.approx(3 / 6)  # extra clusters count as errors


def test_cluster_size_stats():
    stats = cluster_size_stats(np.array([0, 0, 0, 1]), 3)
    assert stats == {"min": 0, "max": 3, "median": 1.0, "empty": 1, "largest_over_fair_share": 2.25}


def test_contingency_keeps_empty_clusters_and_fair_share():
    clusters, labels = np.array([0, 0, 2, 2, 2]), np.array([1, 1, 0, 1, 0])
    counts = contingency(clusters, labels, num_clusters=4)
    assert counts.tolist() == [[0, 2], [0, 0], [2, 1], [0, 0]]
    assert largest_over_fair_share(counts.sum(axis=1)) == 3 * 4 / 5


@settings(max_examples=80, deadline=None)
@given(
    first=st.lists(st.integers(-2, 6), min_size=1, max_size=80),
    seed=st.integers(0, 999),
    groups=st.integers(1, 9),
)
def test_nmi_and_ari_equal_scikit_learns(first, seed, groups):
    """Computed here to keep scikit-learn out of a training process; the same numbers as scikit-learn's, including
    its limit cases (one group each, one item per group, a labeling against itself)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    first = np.array(first)
    rng = np.random.default_rng(seed)
    for second in (rng.integers(0, groups, len(first)), first, np.zeros_like(first), np.arange(len(first))):
        assert nmi(first, second) == pytest.approx(normalized_mutual_info_score(first, second), abs=1e-12)
        assert ari(first, second) == pytest.approx(adjusted_rand_score(first, second), abs=1e-12)


def test_nmi_and_ari_refuse_empty_labelings_or_different_lengths():
    with pytest.raises(ValueError, match="same length, got 3 and 2 items"):
        nmi(np.array([0, 1, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="non-empty"):
        ari(np.array([]), np.array([]))
