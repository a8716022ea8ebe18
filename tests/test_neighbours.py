import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepcluster import neighbours
from deepcluster.neighbours import merge_nearest, nearest_among, nearest_neighbours, neighbour_targets


@settings(max_examples=30, deadline=None)
@given(num_points=st.integers(3, 60), count=st.integers(1, 5), seed=st.integers(0, 999))
def test_nearest_neighbours_match_a_full_sort(num_points, count, seed):
    count = min(count, num_points - 1)
    points = torch.nn.functional.normalize(torch.randn(num_points, 6, generator=torch.Generator().manual_seed(seed)))
    found = nearest_neighbours(points, count)
    similarity = points @ points.T
    similarity.fill_diagonal_(float("-inf"))
    expected = similarity.sort(dim=1, descending=True).values[:, :count]
    assert found.shape == (num_points, count)
    assert not (found == torch.arange(num_points).unsqueeze(1)).any()  # never the point itself
    assert torch.allclose(similarity.gather(1, found), expected)


def test_chunks_give_the_same_neighbours(monkeypatch):
    points = torch.nn.functional.normalize(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)))
    whole = nearest_neighbours(points, 3)
    monkeypatch.setitem(neighbours.CHUNK_ELEMENTS, "cpu", 120)  # 2 rows a chunk
    monkeypatch.setattr(neighbours, "MIN_CHUNK_ROWS", 1)
    assert torch.equal(nearest_neighbours(points, 3), whole)


def test_searches_of_parts_of_the_pool_merge_into_the_search_of_the_whole():
    points = torch.nn.functional.normalize(torch.randn(40, 5, generator=torch.Generator().manual_seed(1)))
    queries = points[10:25]  # their own rows in the pool are 10..24
    first = nearest_among(queries, points[:18], 4)
    second = nearest_among(queries, points[18:], 4, pool_start=18)
    merged = merge_nearest(first, second, 4)
    whole = nearest_among(queries, points, 4)
    assert torch.equal(merged[1], whole[1]) and torch.allclose(merged[0], whole[0])
    tiny = nearest_among(queries, points[:2], 4)  # a pool smaller than the count: all of it
    assert tiny[1].shape == (15, 2)


def test_targets_are_each_clusters_share_among_a_point_and_its_neighbours():
    assignments = torch.tensor([0, 0, 1, 2])
    neighbours = torch.tensor([[1, 2], [0, 3], [3, 3], [2, 1]])
    targets = neighbour_targets(assignments, neighbours, 3)
    third = 1 / 3
    expected = [[2 * third, third, 0], [2 * third, 0, third], [0, third, 2 * third], [third, third, third]]
    assert torch.allclose(targets, torch.tensor(expected))


def test_neighbours_need_fewer_than_the_points():
    points = torch.randn(4, 2)
    for count in (0, 4):
        try:
            nearest_neighbours(points, count)
        except ValueError as error:
            assert f"{count} neighbours of 4 points" in str(error)
        else:
            raise AssertionError("expected a ValueError")
