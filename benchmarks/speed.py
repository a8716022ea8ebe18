"""Benchmarks: `deepcluster bench` (flow vs plain library loop) and `deepcluster bench-kmeans`.

`bench` runs one configuration twice, each in a fresh child process so that peak memory is its
own: once as the Prefect flow writing every artifact, once as the library loop (`epoch.run_epoch`)
with no Prefect and nothing written. Per-epoch stage times come from the epochs' metrics; the
figures reported are medians over epochs >= 1 (epoch 0 pays one-off warm-up costs).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from deepcluster import runtime
from deepcluster.config import Config
from deepcluster.epoch import run_epoch
from deepcluster.kmeans import assign, kmeans
from deepcluster.neighbours import nearest_neighbours
from deepcluster.runs import load_inputs, new_session

STAGES = ("extract", "pca", "kmeans", "targets", "resample", "train", "evaluate")
MODES = ("library", "flow")
NOISE = 1.0  # spread of the synthetic clusters relative to their centres: they overlap, as real features do


# ---------------------------------------------------------------- bench: one mode per child process


def measure(mode: str, config: Config) -> dict[str, Any]:
    """Run `config` as the flow or the library loop in this process; per-epoch stage seconds and peaks."""
    runtime.configure_torch(config)
    device = runtime.resolve_device(config.device)
    start = time.perf_counter()
    epochs = _run_flow(config) if mode == "flow" else _run_library(config, device)
    total = time.perf_counter() - start
    return {
        "mode": mode,
        "device": str(device),
        "epochs": epochs,
        "total_seconds": round(total, 3),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None,
    }


def _run_library(config: Config, device: torch.device) -> list[dict[str, Any]]:
    session = new_session(config, *load_inputs(config), device)
    return [run_epoch(session, epoch, progress=False) for epoch in range(config.epochs)]


def _run_flow(config: Config) -> list[dict[str, Any]]:
    from deepcluster import run_metrics
    from deepcluster.artifacts import RunLayout
    from flows import load_flow

    deepcluster_flow = load_flow()
    logging.getLogger("prefect").setLevel(logging.WARNING)  # the bench prints its own summary

    with tempfile.TemporaryDirectory(prefix="deepcluster-bench-") as runs_dir:
        deepcluster_flow(config=config, run_id="bench", runs_dir=runs_dir, progress=False)
        layout = RunLayout(Path(runs_dir), "bench")
        return [run_metrics.epoch_metrics(layout, epoch) for epoch in layout.completed_epochs()]


def _child_main(argv: list[str]) -> int:
    mode, config_json, out_path = argv
    result = measure(mode, Config.model_validate_json(config_json))
    Path(out_path).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------- bench: the parent


def bench(config: Config, rounds: int = 2, json_path: Path | None = None) -> dict[str, Any]:
    """Measure the library loop and the flow, alternating, `rounds` times each, every run in its own
    child process (alternating evens out a machine whose speed drifts); print and return the summary."""
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="deepcluster-bench-") as scratch:
        for round_number in range(rounds):
            for mode in MODES:
                out = Path(scratch) / f"{mode}-{round_number}.json"
                command = [sys.executable, "-m", "benchmarks.speed", mode, config.model_dump_json(), str(out)]
                print(
                    f"bench: round {round_number + 1}/{rounds}: the {mode} ({config.epochs} epochs) ...",
                    file=sys.stderr,
                    flush=True,
                )
                subprocess.run(command, check=True)
                results[mode].append(json.loads(out.read_text()))
    summary = summarize(config, results)
    print(format_summary(summary))
    if json_path is not None:
        json_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def summarize(config: Config, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians over epochs >= 1 of all rounds (epoch 0 where a run has only one) of every stage, per mode."""
    summary: dict[str, Any] = {
        "config": config.to_json_dict(),
        "host": os.uname().nodename,
        "cpus": runtime.cpu_count(),
        "torch_threads": results["library"][0].get("torch_threads"),
        "date": time.strftime("%Y-%m-%d"),
        "rounds": len(results["library"]),
    }
    for mode, runs in results.items():
        epochs = runs[0]["epochs"]
        counted = [epoch for run in runs for epoch in (run["epochs"][1:] or run["epochs"])]
        seconds = {name: [epoch["stage_seconds"][name] for epoch in counted] for name in (*STAGES, "epoch")}
        medians = {name: statistics.median(values) for name, values in seconds.items()}
        medians["orchestration"] = statistics.median(
            epoch["stage_seconds"]["epoch"] - sum(epoch["stage_seconds"][name] for name in STAGES) for epoch in counted
        )
        if mode == "flow":
            medians["write (background, wall)"] = statistics.median(
                epoch["stage_seconds"]["write"] for epoch in counted
            )
        summary[mode] = {
            "device": runs[0]["device"],
            "median_seconds": {name: round(value, 4) for name, value in medians.items()},
            "images_per_second": round(epochs[0]["num_images"] / medians["epoch"], 1),
            "total_seconds": statistics.median(run["total_seconds"] for run in runs),
            "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
            "peak_cuda_mb": runs[0]["peak_cuda_mb"] and max(run["peak_cuda_mb"] for run in runs),
            "per_epoch": [
                [{"epoch": epoch["epoch"], "stage_seconds": epoch["stage_seconds"]} for epoch in run["epochs"]]
                for run in runs
            ],
            "train_losses": [epoch["train_loss"] for epoch in epochs],
            "nmi": [(epoch.get("labels") or {}).get("nmi") for epoch in epochs],
        }
    library, flow = summary["library"], summary["flow"]
    summary["flow_over_library"] = round(flow["median_seconds"]["epoch"] / library["median_seconds"]["epoch"], 3)
    summary["same_results"] = all(
        [epoch["train_loss"] for epoch in run["epochs"]] == library["train_losses"]
        for runs in results.values()
        for run in runs
    )
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    library, flow = summary["library"], summary["flow"]
    config = summary["config"]
    lines = [
        f"dataset {config['dataset']} (limit {config['limit']}), arch {config['arch']}, k {config['num_clusters']}, "
        f"batch {config['batch_size']}, {config['epochs']} epochs, device {library['device']}, "
        f"{summary['cpus']} CPUs; medians over epochs >= 1 of {summary['rounds']} alternating rounds",
        f"{'':24}{'library':>12}{'flow':>12}",
    ]
    names = (*STAGES, "orchestration", "epoch", "write (background, wall)")
    for name in names:
        lib, flo = library["median_seconds"].get(name), flow["median_seconds"].get(name)
        lines.append(f"{name + ' s':24}{_cell(lib, '.3f'):>12}{_cell(flo, '.3f'):>12}")
    for label, key, spec in [
        ("images/s", "images_per_second", ".0f"),
        ("run s (incl. set-up)", "total_seconds", ".1f"),
        ("peak RSS MB", "peak_rss_mb", ".0f"),
        ("peak CUDA MB", "peak_cuda_mb", ".0f"),
    ]:
        lines.append(f"{label:24}{_cell(library[key], spec):>12}{_cell(flow[key], spec):>12}")
    lines.append("per epoch (seconds; first round):")
    for mode in MODES:
        for epoch in summary[mode]["per_epoch"][0]:
            seconds = epoch["stage_seconds"]
            stages = ", ".join(f"{name} {seconds[name]:.3f}" for name in (*STAGES, "epoch", "write") if name in seconds)
            lines.append(f"  {mode:8} epoch {epoch['epoch']}: {stages}")
    lines.append(f"flow / library epoch time: {summary['flow_over_library']:.3f}")
    lines.append(f"same train losses in every run: {'yes' if summary['same_results'] else 'no'}")
    return "\n".join(lines)


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# ---------------------------------------------------------------- bench-kmeans


def synthetic_points(n: int, dim: int, k: int, seed: int, device: torch.device) -> torch.Tensor:
    """n points around k Gaussian centres (like clustered features), float32 on `device`."""
    generator = torch.Generator(device).manual_seed(seed)
    centres = torch.randn(k, dim, generator=generator, device=device)
    points = torch.randn(n, dim, generator=generator, device=device).mul_(NOISE)
    labels = torch.randint(0, k, (n,), generator=generator, device=device)
    return points.add_(centres[labels])


def bench_kmeans(
    n: int,
    dim: int,
    k: int,
    iterations: int,
    device: torch.device,
    seed: int = 0,
    sklearn_inits: tuple[str, ...] = ("random", "k-means++"),
    faiss: bool = True,
    json_path: Path | None = None,
    neighbours: int = 0,
) -> dict[str, Any]:
    """Time the project's k-means, faiss and scikit-learn on the same points, one init, `iterations` at most;
    with `neighbours` M > 0, also the exact search for every point's M nearest neighbours (the soft targets'
    search of each epoch) on the same points, L2-normalised as the run's features are.

    Every objective is the same measure: mean squared distance of each point to its nearest returned centroid.
    """
    points = synthetic_points(n, dim, k, seed, device)
    rows = [_time_ours(points, k, iterations, seed)]
    if faiss:
        rows.append(_time_faiss(points, k, iterations, seed))
    for init in sklearn_inits:
        rows.append(_time_sklearn(points, k, iterations, seed, init))
    ours = rows[0]
    for row in rows:
        if row.get("seconds") is not None:
            row["seconds_per_iteration"] = round(row["seconds"] / max(1, row["iterations"]), 4)
            row["seconds_vs_ours"] = round(row["seconds"] / ours["seconds"], 2)
            row["objective_vs_ours"] = round(row["objective"] / ours["objective"] - 1, 4)
    summary: dict[str, Any] = {
        "n": n,
        "dim": dim,
        "k": k,
        "max_iterations": iterations,
        "device": str(device),
        "cpus": runtime.cpu_count(),
        "host": os.uname().nodename,
        "date": time.strftime("%Y-%m-%d"),
        "results": rows,
    }
    if neighbours:
        summary["neighbours"] = _time_neighbours(points, neighbours)
        summary["neighbours"]["seconds_vs_ours"] = round(summary["neighbours"]["seconds"] / rows[0]["seconds"], 2)
    print(format_kmeans(summary))
    if json_path is not None:
        json_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _row(method: str, seconds: float, iterations: int, points: torch.Tensor, centroids: Any) -> dict[str, Any]:
    """One method's result; its objective measured on `points` the same way for every method."""
    centroids = torch.as_tensor(centroids, dtype=torch.float32, device=points.device)  # tensor or numpy
    objective = float(assign(points, centroids)[1].mean())
    return {"method": method, "seconds": round(seconds, 3), "iterations": iterations, "objective": objective}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ours(points: torch.Tensor, k: int, iterations: int, seed: int) -> dict[str, Any]:
    if points.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(points.device)
        base = torch.cuda.memory_allocated(points.device)
    _synchronize(points.device)
    start = time.perf_counter()
    result = kmeans(points, k, torch.Generator().manual_seed(seed), iterations)
    _synchronize(points.device)
    seconds = time.perf_counter() - start
    row = _row(f"deepcluster (torch, {points.device.type})", seconds, result.iterations, points, result.centroids)
    if points.device.type == "cuda":
        row["extra_cuda_mb"] = round((torch.cuda.max_memory_allocated(points.device) - base) / 2**20, 1)
    return row


def _time_neighbours(points: torch.Tensor, count: int) -> dict[str, Any]:
    normalised = torch.nn.functional.normalize(points, dim=1)
    _synchronize(points.device)
    start = time.perf_counter()
    nearest_neighbours(normalised, count)
    _synchronize(points.device)
    return {"count": count, "seconds": round(time.perf_counter() - start, 3)}


def _time_faiss(points: torch.Tensor, k: int, iterations: int, seed: int) -> dict[str, Any]:
    try:
        import faiss
    except ImportError:
        return {"method": "faiss", "seconds": None, "note": "faiss not installed (pip install faiss-cpu)"}
    data = points.cpu().numpy()
    use_gpu = points.device.type == "cuda" and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    model = faiss.Kmeans(
        data.shape[1],
        k,
        niter=iterations,
        seed=seed,
        gpu=use_gpu,
        max_points_per_centroid=len(data) // k + 1,  # all points, no subsampling: the same problem as ours
    )
    start = time.perf_counter()
    model.train(data)
    seconds = time.perf_counter() - start
    ran = len(model.obj) if model.obj is not None else iterations
    return _row(f"faiss {faiss.__version__} ({'gpu' if use_gpu else 'cpu'})", seconds, ran, points, model.centroids)


def _time_sklearn(points: torch.Tensor, k: int, iterations: int, seed: int, init: str) -> dict[str, Any]:
    import sklearn
    from sklearn.cluster import KMeans

    data = points.cpu().numpy()
    model = KMeans(k, init=init, n_init=1, max_iter=iterations, tol=0.0, random_state=seed, algorithm="lloyd")
    start = time.perf_counter()
    model.fit(data)
    seconds = time.perf_counter() - start
    method = f"scikit-learn {sklearn.__version__} (cpu, init={init})"
    return _row(method, seconds, int(model.n_iter_), points, model.cluster_centers_)


def format_kmeans(summary: dict[str, Any]) -> str:
    lines = [
        f"k-means: {summary['n']} x {summary['dim']}, k = {summary['k']}, at most {summary['max_iterations']} "
        f"iterations, one init, {summary['cpus']} CPUs, data on {summary['device']}",
        f"{'method':44}{'seconds':>9}{'iters':>7}{'s/iter':>8}{'objective':>12}{'time/ours':>11}{'obj/ours-1':>12}",
    ]
    for row in summary["results"]:
        if row.get("seconds") is None:
            lines.append(f"{row['method']:44}  skipped: {row['note']}")
            continue
        lines.append(
            f"{row['method']:44}{row['seconds']:>9.2f}{row['iterations']:>7}{row['seconds_per_iteration']:>8.3f}"
            f"{row['objective']:>12.4f}"
            f"{row['seconds_vs_ours']:>11.2f}{row['objective_vs_ours']:>+12.2%}"
        )
    if "neighbours" in summary:
        found = summary["neighbours"]
        lines.append(
            f"{found['count']} nearest neighbours of every point (exact, L2-normalised points): "
            f"{found['seconds']:.2f} s, {found['seconds_vs_ours']:.2f} x the project's k-means"
        )
    extra = summary["results"][0].get("extra_cuda_mb")
    if extra is not None:
        lines.append(f"GPU memory of the project's k-means beyond the points: {extra:.0f} MB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
