import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepcluster.kmeans import assign, centroid_means, fill_empty_clusters, kmeans, kmeans_plus_plus


def blobs(num_per_blob: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(num_per_blob)
    return centers[labels] + 0.3 * torch.randn(len(labels), 2, generator=generator), labels


@settings(max_examples=60, deadline=None)
@given(
    num_points=st.integers(2, 80),
    num_distinct=st.integers(1, 5),
    k_fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_never_an_empty_cluster_even_with_duplicates(num_points, num_distinct, k_fraction, seed):
    generator = torch.Generator().manual_seed(seed)
    distinct = torch.randn(num_distinct, 3, generator=generator)
    points = distinct[torch.randint(0, num_distinct, (num_points,), generator=generator)]
    num_clusters = 2 + int(k_fraction * (num_points - 2))
    result = kmeans(points, num_clusters, generator, iterations=5)
    # assignments partition the data: one cluster id in [0, k) per point, every cluster used
    assert result.assignments.shape == (num_points,)
    assert result.assignments.min() >= 0 and result.assignments.max() < num_clusters
    assert torch.bincount(result.assignments, minlength=num_clusters).min() >= 1
    assert result.centroids.shape == (num_clusters, 3)


def test_recovers_separated_blobs_with_the_best_of_several_inits():
    points, labels = blobs()
    runs = [kmeans(points, 3, torch.Generator().manual_seed(seed), iterations=20) for seed in range(5)]
    result = min(runs, key=lambda run: run.loss)
    for blob in range(3):  # each blob is exactly one cluster
        assert len(torch.unique(result.assignments[labels == blob])) == 1
    assert len(torch.unique(result.assignments)) == 3
    assert result.loss < 0.3


def test_converges_to_a_lloyd_fixed_point():
    points, _ = blobs(seed=2)
    result = kmeans(points, 5, torch.Generator().manual_seed(0), iterations=50)
    nearest, _ = assign(points, result.centroids)
    assert torch.equal(nearest, result.assignments)
    for cluster in range(5):
        assert torch.allclose(result.centroids[cluster], points[result.assignments == cluster].mean(0), atol=1e-5)


@pytest.mark.parametrize("iterations", [1, 2, 50])
def test_each_point_is_assigned_to_its_nearest_assigned_to_centroid(iterations: int):
    """Stopped early or converged, `assigned_to` gives the assignments back (what `predict` relies on)."""
    points, _ = blobs(seed=3)
    result = kmeans(points, 6, torch.Generator().manual_seed(1), iterations=iterations, init="random")
    assert torch.equal(assign(points, result.assigned_to)[0], result.assignments)
    if result.iterations < iterations:  # converged: the two sets of centroids agree
        assert torch.equal(result.assigned_to, result.centroids)


def test_same_generator_seed_same_result():
    points, _ = blobs(seed=1)
    first = kmeans(points, 7, torch.Generator().manual_seed(5))
    again = kmeans(points, 7, torch.Generator().manual_seed(5))
    assert torch.equal(first.assignments, again.assignments) and torch.equal(first.centroids, again.centroids)


def test_fill_empty_clusters_splits_a_donor():
    points = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
    assignments = torch.tensor([0, 0, 0, 0])
    centroids = torch.tensor([[2.5], [100.0]])
    filled = fill_empty_clusters(points, assignments, centroids, torch.Generator().manual_seed(0))
    assert filled == 1
    assert sorted(torch.bincount(assignments).tolist()) == [2, 2]  # the split followed the geometry


def test_chunked_assignment_matches_full_distances(monkeypatch):
    import deepcluster.kmeans as kmeans_module

    generator = torch.Generator().manual_seed(0)
    points, centroids = torch.randn(257, 4, generator=generator), torch.randn(9, 4, generator=generator)
    monkeypatch.setattr(kmeans_module, "CHUNK_ELEMENTS", {"cpu": 20})  # 2 rows per chunk
    assignments, distances = assign(points, centroids)
    full = torch.cdist(points, centroids) ** 2
    assert torch.equal(assignments, full.argmin(dim=1))
    assert torch.allclose(distances, full.min(dim=1).values, atol=1e-4)


def test_stopping_at_convergence_gives_what_more_iterations_would():
    generator = torch.Generator().manual_seed(4)
    points = torch.cat([torch.randn(100, 3, generator=generator) + shift for shift in (0.0, 8.0, 16.0)])
    converged = kmeans(points, 3, torch.Generator().manual_seed(0), iterations=50)
    assert converged.iterations < 50
    exact = kmeans(points, 3, torch.Generator().manual_seed(0), iterations=converged.iterations)
    assert torch.equal(exact.assignments, converged.assignments)
    assert torch.equal(exact.centroids, converged.centroids)
    one_less = kmeans(points, 3, torch.Generator().manual_seed(0), iterations=converged.iterations - 1)
    assert torch.equal(one_less.assignments, converged.assignments)  # the last iteration only confirmed it


@pytest.mark.parametrize(("num_clusters", "message"), [(1, "k >= 2"), (11, "at least as many points")])
def test_invalid_k(num_clusters, message):
    with pytest.raises(ValueError, match=message):
        kmeans(torch.randn(10, 2), num_clusters, torch.Generator())


def test_faiss_backend_agrees_with_torch():
    pytest.importorskip("faiss", reason="faiss is an optional backend (pip install faiss-cpu)")
    from deepcluster.kmeans import faiss_kmeans

    points = torch.randn(2000, 8, generator=torch.Generator().manual_seed(3))  # no structure: no bad minima
    ours = kmeans(points, 10, torch.Generator().manual_seed(0))
    theirs = faiss_kmeans(points, 10, seed=0)
    assert torch.bincount(theirs.assignments, minlength=10).min() > 0
    assert theirs.loss == pytest.approx(ours.loss, rel=0.05)


def test_kmeans_plus_plus_seeds_one_centroid_per_separated_blob():
    points, labels = blobs()
    for seed in range(5):  # random seeding often puts two centroids in one blob; D^2 seeding does not
        centroids = kmeans_plus_plus(points, 3, torch.Generator().manual_seed(seed))
        nearest, _ = assign(centroids, torch.stack([points[labels == blob].mean(0) for blob in range(3)]))
        assert sorted(nearest.tolist()) == [0, 1, 2]
        assert any(torch.equal(centroids[0], point) for point in points)  # seeds are data points


def test_kmeans_plus_plus_copes_with_fewer_distinct_points_than_k():
    points = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat(5, 1)
    result = kmeans(points, 4, torch.Generator().manual_seed(0), init="k-means++")
    assert torch.bincount(result.assignments, minlength=4).min() > 0


def test_given_centroids_start_lloyd_there():
    points, labels = blobs(seed=4)
    start = centroid_means(points, labels, 3)  # already the fixed point of these clusters
    result = kmeans(points, 3, torch.Generator(), iterations=5, init=start)
    assert torch.equal(result.assignments, labels) and result.iterations == 2  # the second one sees no change
    with pytest.raises(ValueError, match=r"initial centroids must be \(3, 2\)"):
        kmeans(points, 3, torch.Generator(), init=start[:2])
