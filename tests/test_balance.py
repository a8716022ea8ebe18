import torch

from deepcluster import kmeans as kmeans_module
from deepcluster.balance import balance, balanced_assign
from deepcluster.kmeans import assign, kmeans


def _unequal_blobs(sizes: list[int], noise: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit points around len(sizes) random directions, `sizes` points each, and each point's blob."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(len(sizes), 16, generator=generator), dim=1)
    blobs = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    offsets = noise * torch.randn(len(blobs), 16, generator=generator)
    return torch.nn.functional.normalize(centres[blobs] + offsets, dim=1), blobs


def test_every_cluster_takes_an_equal_share():
    points, _ = _unequal_blobs([2000, 300, 300, 200, 200])
    clustering = kmeans(points, 10, torch.Generator().manual_seed(0), 20, "k-means++")
    sizes = torch.bincount(clustering.assignments, minlength=10)
    assert sizes.max() > 1.5 * sizes.min()  # k-means alone: unequal

    balanced = balance(points, clustering, torch.Generator().manual_seed(1))
    sizes = torch.bincount(balanced.assignments, minlength=10)
    assert sizes.min() >= 0.85 * 300 and sizes.max() <= 1.15 * 300, sizes.tolist()  # the argmax of equal shares
    for cluster in range(10):  # each centroid is its cluster's mean
        torch.testing.assert_close(balanced.centroids[cluster], points[balanced.assignments == cluster].mean(0))
    assert torch.equal(balanced.assigned_to, balanced.centroids)
    # it moves the points at the clusters' borders only: most keep their nearest centroid
    assert float((balanced.assignments == clustering.assignments).double().mean()) > 0.7


def test_equal_clusters_keep_their_nearest_centroid():
    points, blobs = _unequal_blobs([200, 200, 200, 200], noise=0.05)
    clustering = kmeans(points, 4, torch.Generator().manual_seed(0), 20, "k-means++")
    balanced = balanced_assign(points, clustering.centroids, clustering.loss)
    assert torch.equal(balanced, assign(points, clustering.centroids)[0])
    assert all(len(torch.unique(balanced[blobs == blob])) == 1 for blob in range(4))  # a blob each


def test_the_shift_is_found_a_chunk_at_a_time(monkeypatch):
    """Chunks of a few rows give the assignment of one chunk of all rows."""
    points, _ = _unequal_blobs([500, 100, 100])
    clustering = kmeans(points, 6, torch.Generator().manual_seed(0), 20, "k-means++")
    whole = balanced_assign(points, clustering.centroids, clustering.loss)
    monkeypatch.setitem(kmeans_module.CHUNK_ELEMENTS, "cpu", 6 * 100)  # 7 chunks of 100 rows
    assert torch.equal(balanced_assign(points, clustering.centroids, clustering.loss), whole)


def test_points_on_their_centroids_keep_their_clusters():
    points = torch.eye(4).repeat_interleave(torch.tensor([5, 1, 1, 1]), dim=0)  # k-means loss 0
    clustering = kmeans(points, 4, torch.Generator().manual_seed(0), 20, "k-means++")
    assert clustering.loss == 0
    assert balance(points, clustering, torch.Generator().manual_seed(1)) is clustering
