"""`deepcluster bench` and `deepcluster bench-kmeans` on tiny problems (what they report, not how fast)."""

import json
from pathlib import Path

import pytest
import torch

from benchmarks.speed import bench_kmeans, summarize
from deepcluster.cli import main
from tests.helpers import tiny_config


def _run(mode: str, epoch_seconds: list[float], losses: list[float]) -> dict:
    epochs = []
    for epoch, (seconds, loss) in enumerate(zip(epoch_seconds, losses, strict=True)):
        stages = {
            "extract": 0.1,
            "pca": 0.1,
            "kmeans": 0.1,
            "targets": 0.0,
            "resample": 0.1,
            "train": seconds - 0.6,
            "evaluate": 0.1,
        }
        if mode == "flow":
            stages["write"] = 0.05
        epochs.append(
            {"epoch": epoch, "num_images": 300, "train_loss": loss, "stage_seconds": {**stages, "epoch": seconds}}
        )
    return {
        "mode": mode,
        "device": "cpu",
        "epochs": epochs,
        "total_seconds": 9.0,
        "peak_rss_mb": 1.0,
        "peak_cuda_mb": None,
    }


def test_summary_takes_medians_over_epochs_after_the_first_and_compares_results():
    results = {
        "library": [
            _run("library", [9.0, 1.0, 1.2], [3.0, 2.0, 1.0]),
            _run("library", [9.0, 1.1, 1.0], [3.0, 2.0, 1.0]),
        ],
        "flow": [_run("flow", [9.0, 1.1, 1.3], [3.0, 2.0, 1.0]), _run("flow", [9.0, 1.1, 1.2], [3.0, 2.0, 1.0])],
    }
    summary = summarize(tiny_config(epochs=3), results)
    assert summary["library"]["median_seconds"]["epoch"] == pytest.approx(1.05)  # epoch 0 (warm-up) left out
    assert summary["flow"]["median_seconds"]["epoch"] == pytest.approx(1.15)
    assert summary["flow"]["median_seconds"]["orchestration"] == pytest.approx(0.1)  # epoch minus its stages
    assert summary["flow_over_library"] == pytest.approx(1.15 / 1.05, abs=1e-3)
    assert summary["library"]["images_per_second"] == pytest.approx(300 / 1.05, abs=0.1)
    assert summary["same_results"]
    results["flow"][1]["epochs"][2]["train_loss"] = 0.5
    assert not summarize(tiny_config(epochs=3), results)["same_results"]


def test_bench_runs_flow_and_library_and_writes_json(prefect_harness, tmp_path: Path, monkeypatch, capsys):
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # the children use the test server
    args = ["bench", "--limit", "300", "--epochs", "2", "--k", "10", "--batch-size", "64", "--min-epoch-samples", "0"]
    assert main([*args, "--device", "cpu", "--rounds", "1", "--json-out", str(tmp_path / "bench.json")]) == 0
    output = capsys.readouterr().out
    assert "flow / library epoch time" in output and "same train losses in every run: yes" in output
    summary = json.loads((tmp_path / "bench.json").read_text())
    for mode in ("library", "flow"):
        assert summary[mode]["median_seconds"]["epoch"] > 0 and summary[mode]["peak_rss_mb"] > 100
        assert [epoch["epoch"] for epoch in summary[mode]["per_epoch"][0]] == [0, 1]
    assert summary["flow"]["median_seconds"]["write (background, wall)"] > 0


def test_bench_kmeans_compares_on_the_same_points(tmp_path: Path):
    pytest.importorskip("faiss", reason="faiss is an optional backend (pip install faiss-cpu)")
    summary = bench_kmeans(
        3000, 8, 10, 20, torch.device("cpu"), json_path=tmp_path / "k.json", sklearn_inits=("random",), neighbours=5
    )
    methods = [row["method"] for row in summary["results"]]
    assert methods[0].startswith("deepcluster") and methods[1].startswith("faiss") and "init=random" in methods[2]
    for row in summary["results"]:
        assert 1 <= row["iterations"] <= 20 and row["objective"] > 0
        assert abs(row["objective_vs_ours"]) < 0.5  # the same problem, comparable optima
    written = json.loads((tmp_path / "k.json").read_text())
    assert written["k"] == 10 and written["neighbours"]["count"] == 5 and written["neighbours"]["seconds"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", "50", "--n", "10"], "--k 50 is larger than --n 10"),
        (["--iters", "0"], "--iters must be at least 1"),
        (["--n", "10", "--k", "5", "--neighbours", "10"], "--neighbours must be between 0 and --n - 1 (9), got 10"),
    ],
)
def test_bench_kmeans_rejects_bad_sizes(args, message, capsys):
    assert main(["bench-kmeans", *args]) == 2
    assert message in capsys.readouterr().err


def test_bench_scale_ingests_streams_and_compares_ranks_in_child_processes(tmp_path: Path, capsys):
    """One call of each part (a child process, or two ranks, for each line), to keep it short."""
    out = tmp_path / "scale.json"
    arguments = ["--images", "8", "--image-size", "28", "--workers", "1", "--json-out", str(out)]
    growth = ["--growth", "40,32", "--growth-samples", "32", "--growth-batch-size", "16", "--growth-streamed-only"]
    ranks = ["--ranks", "2", "--rank-epochs", "2", "--rank-images", "300"]
    assert main(["bench-scale", *arguments, *growth, *ranks]) == 0
    summary = json.loads(out.read_text())
    assert summary["growth_batch_size"] == 16
    whole, quarter = summary["ingest"]
    assert (whole["images"], whole["workers"], quarter["images"]) == (40, 1, 10)  # the folder has the largest N
    assert whole["store_bytes"] > quarter["store_bytes"] and whole["peak_rss_mb"] > 50
    assert whole["bare_seconds"] > 0 and whole["over_bare"] > 0
    lines = [(row["images"], row["inputs"], row["input_mb"]) for row in summary["growth"]]
    assert lines == [(count, "streamed", round(count * 28 * 28 / 2**20, 1)) for count in (32, 40)]
    assert all(row["peak_rss_mb"] > 50 and row["stage_seconds"]["train"] > 0 for row in summary["growth"])
    ranked = summary["ranks"]
    assert len(ranked["1"]["epoch_seconds"]) == len(ranked["2"]["epoch_seconds"]) == 2
    assert 0 < ranked["nmi_between_runs"] <= 1 and ranked["epoch_ratio"] > 0
    assert 0 <= ranked["nmi_between_groupings"] <= 1 and 0 <= ranked["nmi_one_thread_groupings"] <= 1
    assert ranked["kmeans"]["identical_assignments"] >= 0.999
    assert ranked["kmeans"]["objective_relative_difference"] < 1e-4
    printed = capsys.readouterr().out
    assert "images/s" in printed and "NMI between their final groupings" in printed
    assert "k-means of the same features, 1 process vs 2 ranks" in printed
    assert main(["bench-scale", "--growth-batch-size", "0"]) == 2
    assert main(["bench-scale", "--workers", "0"]) == 2
    assert main(["bench-scale", "--rank-images", "0"]) == 2
    assert main(["bench-scale", "--growth", "0"]) == 2
    assert main(["bench-scale", "--folder", str(tmp_path), "--growth", "5"]) == 2  # holds only scale.json
    assert "--growth 5" in capsys.readouterr().err
