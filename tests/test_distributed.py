"""Ranks of one process group (gloo, on the CPU) compute what a single process computes on all the points."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepcluster import distributed, stages
from deepcluster.balance import balance
from deepcluster.kmeans import centroid_means, kmeans
from deepcluster.neighbours import nearest_neighbours
from deepcluster.reduce import fit_pca_whitening
from tests.helpers import on_ranks


def _points(count: int = 1203, dim: int = 16, duplicates: int = 0) -> torch.Tensor:
    points = torch.nn.functional.normalize(torch.randn(count, dim, generator=torch.Generator().manual_seed(3)), dim=1)
    points[:duplicates] = points[0]  # many copies of one point: k-means must split them to fill empty clusters
    return points


CASES = [("random", 40, 0), ("k-means++", 40, 0), ("previous", 40, 0)]
# Almost all points equal: the empty-cluster fix splits them, at random. Which copies go where hangs on ties
# broken by the last bit of sums, so only the result's shape is compared.
DEGENERATE = ("random", 60, 1100)


def _clusterings(points: torch.Tensor) -> list[dict[str, object]]:
    """Every case's clustering of `points` (this rank's shard of them in a process group)."""
    results = []
    for init, k, duplicates in [*CASES, DEGENERATE]:
        points = _points(duplicates=duplicates)
        mine = points[distributed.shard(len(points))]
        start: str | torch.Tensor = init
        if init == "previous":
            previous = (torch.arange(len(points)) % k)[distributed.shard(len(points))]
            start = centroid_means(mine, previous, k)
        clustering = kmeans(mine, k, torch.Generator().manual_seed(5), 30, start)
        balanced = balance(mine, clustering, torch.Generator().manual_seed(6))
        results.append(
            {
                "assignments": distributed.all_gather_rows(clustering.assignments),
                "balanced": distributed.all_gather_rows(balanced.assignments),
                "centroids": clustering.centroids,
                "every_rank_centroids": distributed.all_gather_rows(clustering.centroids),
                "loss": clustering.loss,
                "iterations": clustering.iterations,
            }
        )
    pca = fit_pca_whitening(_points()[distributed.shard(1203)], 8)
    results.append({"mean": pca.mean, "projection": pca.projection})
    return results


def _save_clusterings(path: Path) -> None:
    results = _clusterings(_points())
    if distributed.is_writer():
        torch.save(results, path)


def test_two_ranks_cluster_as_one_process(tmp_path: Path) -> None:
    on_ranks(_save_clusterings, 2, tmp_path / "ranks.pt")
    ranked = torch.load(tmp_path / "ranks.pt")
    alone = _clusterings(_points())
    for (init, k, _), one, two in zip(CASES, alone, ranked, strict=False):
        same = float((one["assignments"] == two["assignments"]).double().mean())
        assert same >= 0.999, f"{init}, k={k}: {same:.4f} of the assignments agree"
        same = float((one["balanced"] == two["balanced"]).double().mean())
        assert same >= 0.999, f"{init}, k={k}: {same:.4f} of the balanced assignments agree"
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)
        assert len(two["assignments"]) == 1203 and int(two["assignments"].max()) < k
        assert len(torch.unique(two["assignments"])) == k  # no empty cluster
        torch.testing.assert_close(two["centroids"], one["centroids"], atol=1e-5, rtol=1e-4)
    degenerate = ranked[len(CASES)]
    assert len(torch.unique(degenerate["assignments"])) == DEGENERATE[1]
    for result in ranked[:-1]:  # every rank ends with the same centroids
        first, second = result["every_rank_centroids"].chunk(2)
        assert torch.equal(first, second)
    torch.testing.assert_close(ranked[-1]["mean"], alone[-1]["mean"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ranked[-1]["projection"], alone[-1]["projection"], atol=1e-4, rtol=1e-4)


def _check_collectives(path: Path) -> None:
    rank = distributed.rank()
    rows = torch.arange(3 + 2 * rank, dtype=torch.float32).unsqueeze(1) + 100 * rank  # shards of 3 and 5 rows
    everything = distributed.all_gather_rows(rows)
    offset, total = distributed.row_offset(len(rows), rows.device)
    picked = distributed.rows_at(rows, torch.tensor([7, 0, 4]), offset)
    on_writer = distributed.gather_rows(rows)
    assert (on_writer is None) == (rank != distributed.WRITER)
    passed = [(start, shard.flatten().tolist()) for start, shard in distributed.each_rank_rows(rows)]
    points = _points()
    neighbours = distributed.all_gather_rows(stages._nearest_neighbours(points[distributed.shard(len(points))], 10))
    if distributed.is_writer():
        torch.save(
            {
                "all": everything,
                "offset": offset,
                "total": total,
                "picked": picked,
                "writer": on_writer,
                "passed": passed,
                "neighbours": neighbours,
            },
            path,
        )


def test_collectives_gather_shards_of_different_sizes(tmp_path: Path) -> None:
    on_ranks(_check_collectives, 2, tmp_path / "out.pt")
    result = torch.load(tmp_path / "out.pt")
    assert result["all"].flatten().tolist() == [0, 1, 2, 100, 101, 102, 103, 104]
    assert torch.equal(result["writer"], result["all"])
    assert (result["offset"], result["total"]) == (0, 8)
    assert result["picked"].flatten().tolist() == [104, 0, 101]
    assert result["passed"] == [(0, [0, 1, 2]), (3, [100, 101, 102, 103, 104])]
    # each rank searched its own points among the shards passing by: the neighbours one process finds among all
    assert torch.equal(result["neighbours"], nearest_neighbours(_points(), 10))


def test_each_rank_of_a_machine_takes_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "3")  # as torchrun sets it, before the process group exists
    assert distributed.rank_device(torch.device("cuda")) == torch.device("cuda", 3)
    assert distributed.rank_device(torch.device("cpu")) == torch.device("cpu")


def test_a_single_process_is_a_world_of_one() -> None:
    rows = torch.arange(5)
    assert distributed.world_size() == 1 and distributed.is_writer()
    assert distributed.shard(10) == slice(0, 10)
    assert distributed.all_gather_rows(rows) is rows and distributed.gather_rows(rows) is rows
    assert distributed.per_rank("augment") == "augment"


def _batch_norm_step(batch_norm: bool) -> dict[str, torch.Tensor]:
    """One training step of a conv + batch norm on this rank's part of a batch of 9 (parts of 4 and 5)."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3))
    images = torch.randn(9, 2, 6, 6, generator=torch.Generator().manual_seed(1))[distributed.shard(9)]
    trained = distributed.synchronized(module, batch_norm)
    output = trained(images)
    (output * torch.arange(output.numel()).view(output.shape)).sum().backward()
    norm = module[1]
    return {
        "output": distributed.all_gather_rows(output.detach()),
        "weight_grad": module[0].weight.grad.clone(),
        "running_var": norm.running_var.clone(),
    }


def _save_batch_norm_steps(path: Path) -> None:
    results = {flag: _batch_norm_step(flag) for flag in (True, False)}
    if distributed.is_writer():
        torch.save(results, path)


def test_ranks_normalise_by_the_whole_batch_with_sync_batch_norm(tmp_path: Path) -> None:
    on_ranks(_save_batch_norm_steps, 2, tmp_path / "steps.pt")
    ranked = torch.load(tmp_path / "steps.pt")
    alone = _batch_norm_step(False)
    # the gradient of a step is the mean over ranks of each one's: scaled by the parts' sizes it is the sum
    for key in ("output", "running_var"):
        torch.testing.assert_close(ranked[True][key], alone[key], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ranked[False]["output"], alone["output"], atol=1e-3)  # each part by its own
