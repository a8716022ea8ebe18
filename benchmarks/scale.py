"""`deepcluster bench-scale`: ingest of an image folder into the input store, and epochs that stream.

Ingest: the same folder decoded into a fresh store once per worker count, each in a child process of its own
(`benchmarks.ingest`) so that its peak memory (its own and its workers') is measured apart; then once more with
a quarter of the images, to show the memory does not grow with their number; and a bare
decode-grayscale-resize loop with the same processes (`benchmarks.decode`), what ingest is measured against.
Epochs: one library epoch on the stored folder with its inputs held in memory and one with them read from their
file a batch at a time, side by side.
Growth (`--growth N1,N2,...`): an epoch on the folder's first N images for each N, streamed and held, each in a
child process, for its peak memory. Without a folder, a synthetic one is written first: colour JPEGs of random
sizes between the input size and twice it.

Ranks (`--ranks N`): the embedded sample trained for a few epochs by 1 rank with all the cores' threads and by
N ranks with a share each (torchrun, gloo), epoch times side by side; the two runs' final assignments compared
(NMI) and both evaluated; and k-means of one epoch's features on N ranks against one process.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepcluster import runtime, store
from deepcluster.config import Config
from deepcluster.errors import ConfigError

if TYPE_CHECKING:
    from deepcluster.artifacts import RunLayout
    from deepcluster.runs import DatasetInfo


# device_budget_gb that holds a run's inputs in memory, and one that streams them from their file
INPUT_BUDGETS_GB = {"held": 1e6, "streamed": 0.0}


def synthetic_folder(folder: Path, count: int, size: int, seed: int = 0) -> None:
    """`count` colour JPEGs, sides drawn between `size` and 2 * `size`, in 10 sub-folders (classes)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index in range(count):
        height, width = rng.integers(size, 2 * size + 1, size=2)
        ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * rng.random(3, dtype=np.float32)
        noise = rng.normal(0, 20, (height, width, 3)).astype(np.float32)
        pixels = np.clip(ramp + noise + 40 * (index % 10) / 10, 0, 255).astype(np.uint8)
        directory = folder / f"class{index % 10}"
        directory.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(directory / f"{index:07d}.jpg", quality=90)


def _child(module: str, *arguments: Any) -> dict[str, Any]:
    """`python -m module arguments...` in a child process (its own peak memory): the JSON of its last line."""
    command = [sys.executable, "-m", module, *map(str, arguments)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _ingest(folder: Path, size: int, workers: int, limit: int | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="deepcluster-bench-store-") as store_dir:
        return _child("benchmarks.ingest", folder, size, workers, store_dir, limit or 0)


def _bare_decode(folder: Path, size: int, workers: int) -> float:
    """Seconds of a bare decode-grayscale-resize loop over the folder with `workers` processes (`benchmarks.decode`),
    in a child process that never imports torch."""
    return float(_child("benchmarks.decode", folder, size, workers)["seconds"])


def _prepared(config: Config, layout: RunLayout) -> DatasetInfo:
    """A new run of `config` at `layout`, ready for its epoch 0 (ingested, Sobel inputs written): its DatasetInfo."""
    from deepcluster import runs

    info = runs.ingest(config, layout)
    runs.sobel_preprocess(layout, info.image_size)
    return info


def _epochs(folder: Path, size: int, runs_dir: Path) -> dict[str, Any]:
    """One library epoch with the inputs held in memory, one with them read from their file: seconds, same losses."""
    from deepcluster import runs
    from deepcluster.artifacts import RunLayout
    from deepcluster.epoch import run_epoch

    results = {}
    for name, budget in INPUT_BUDGETS_GB.items():
        config = Config(dataset=str(folder), image_size=size, epochs=1, device="cpu", device_budget_gb=budget)
        runtime.configure_torch(config)
        layout = RunLayout(runs_dir, name)
        _prepared(config, layout)
        start = time.perf_counter()
        session = runs.open_session(layout, config, 0, runtime.resolve_device("cpu"))
        metrics = run_epoch(session, 0, progress=False)
        results[name] = {"seconds": round(time.perf_counter() - start, 3), "train_loss": metrics["train_loss"]}
    results["streamed_over_held"] = round(results["streamed"]["seconds"] / results["held"]["seconds"], 3)
    results["same_loss"] = results["streamed"]["train_loss"] == results["held"]["train_loss"]
    return results


def _growth(
    folder: Path, size: int, counts: list[int], inputs: tuple[str, ...], samples: int, batch_size: int, scratch: Path
) -> list[dict[str, Any]]:
    """A run on the folder's first N images for each N, with its `inputs` streamed or held (or each in turn), and
    its epoch 0 in a child process of its own: seconds and peak memory. Each epoch trains on `samples` images
    (max_epoch_samples), so that a large N fits a benchmark's time; what grows with N is the rest: extraction, the
    features, the clustering. Training's own memory is set by `batch_size`, whatever N."""
    from deepcluster.artifacts import RunLayout

    rows = []
    with _store_dir(scratch / "store"):
        for count in counts:
            for name in inputs:
                config = Config(
                    dataset=str(folder),
                    image_size=size,
                    limit=count,
                    epochs=1,
                    device="cpu",
                    device_budget_gb=INPUT_BUDGETS_GB[name],
                    max_epoch_samples=samples,
                    batch_size=batch_size,
                )
                layout = RunLayout(scratch / "growth", f"{name}-{count}")
                start = time.perf_counter()
                info = _prepared(config, layout)
                if info.num_images < count:
                    raise ConfigError(f"--growth {count}: {folder} has {info.num_images} readable images")
                prepared = time.perf_counter() - start  # the store's ingest the first time, then the selection
                epoch = _child("benchmarks.scale", "epoch", layout.root)
                rows.append({"images": count, "inputs": name, "prepare_seconds": round(prepared, 2), **epoch})
                shutil.rmtree(layout.root)
    return rows


def _epoch_child(root: Path) -> dict[str, Any]:
    """Epoch 0 of the run at `root`, in this process: seconds, stages, peak memory."""
    from deepcluster import artifacts, runs
    from deepcluster.artifacts import RunLayout
    from deepcluster.config import recorded_config
    from deepcluster.epoch import run_epoch

    layout = RunLayout(root.parent, root.name)
    config = recorded_config(artifacts.read_run_record(layout)["config"])
    runtime.configure_torch(config)
    start = time.perf_counter()
    session = runs.open_session(layout, config, 0, runtime.resolve_device("cpu"))
    metrics = run_epoch(session, 0, progress=False)
    return {
        "seconds": round(time.perf_counter() - start, 2),  # with reading the inputs where they are held
        "stage_seconds": metrics["stage_seconds"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "input_mb": round(math.prod(session.inputs.shape) / 2**20, 1),  # uint8
    }


def _ranks(ranks: int, epochs: int, limit: int | None, runs_dir: Path) -> dict[str, Any]:
    """The sample trained by 1 rank and by `ranks` ranks: epoch seconds, quality, and k-means on the same features
    by one process and by the ranks. limit: a quick check on the sample's first images, one pass an epoch."""
    from deepcluster import artifacts, metrics
    from deepcluster.artifacts import RunLayout
    from deepcluster.evaluate import evaluate_run, final_scores
    from deepcluster.grouping import group_epoch
    from deepcluster.ranks import train_on_ranks

    results: dict[str, Any] = {"epochs": epochs, "limit": limit}
    for count in (1, ranks):
        quick = {} if limit is None else {"limit": limit, "min_epoch_samples": 0}  # one pass over them an epoch
        config = Config(epochs=epochs, device="cpu", nproc_per_node=count, **quick)
        layout = RunLayout(runs_dir, f"ranks-{count}")
        _prepared(config, layout)
        start = time.perf_counter()
        seen: list[dict[str, Any]] = []
        train_on_ranks(layout, config, seen.append)
        last, evaluation = evaluate_run(layout, None, "cpu")
        results[str(count)] = {
            "seconds": round(time.perf_counter() - start, 2),
            "epoch_seconds": [metrics_["stage_seconds"]["epoch"] for metrics_ in seen],
            "nmi_labels_clustered": seen[-1]["labels"]["nmi"],
            "nmi_labels_final": round(final_scores(evaluation["epochs"][str(last)])["nmi"], 4),
        }
    one, many = (RunLayout(runs_dir, f"ranks-{count}") for count in (1, ranks))
    last = epochs - 1
    alone = artifacts.read_clusters(one.assignments(last))
    results["nmi_between_runs"] = round(metrics.nmi(alone, artifacts.read_clusters(many.assignments(last))), 4)
    # The groups a user gets: each run's last epoch grouped into as many groups as the sample has classes.
    classes = len(np.unique(artifacts.load_array(one.labels)))
    groups = [group_epoch(layout, last, classes, config.grouping, "cpu")[1] for layout in (one, many)]
    results["nmi_between_groupings"] = round(metrics.nmi(*groups), 4)
    # How far floating-point rounding alone moves a run: the same run in one process on 1 thread.
    one_thread, one_thread_groups = _one_thread_run(one, config, classes)
    results["nmi_one_thread"] = round(metrics.nmi(alone, one_thread), 4)
    results["nmi_one_thread_groupings"] = round(metrics.nmi(groups[0], one_thread_groups), 4)
    results["epoch_ratio"] = round(sum(results[str(ranks)]["epoch_seconds"]) / sum(results["1"]["epoch_seconds"]), 3)
    results["kmeans"] = _kmeans_on_ranks(one.features(last), ranks, runs_dir / "kmeans.json")
    return results


def _one_thread_run(layout: Any, config: Config, classes: int) -> tuple[Any, Any]:
    """The run's config trained again in this process on one thread: its last epoch's assignments, and its
    convnet's final grouping into `classes` groups."""
    import torch

    from deepcluster import runs
    from deepcluster.epoch import run_epoch
    from deepcluster.features import representation_features
    from deepcluster.grouping import group

    threads = torch.get_num_threads()
    runtime.configure_torch(config)
    torch.set_num_threads(1)
    try:
        session = runs.open_session(layout, config.model_copy(update={"nproc_per_node": 1}), 0, torch.device("cpu"))
        for epoch in range(config.epochs):
            run_epoch(session, epoch, progress=False)
        representation = representation_features(session.model, session.inputs, config.batch_size, session.bf16)
    finally:
        torch.set_num_threads(threads)
    return session.previous_assignments, group(representation.cpu().numpy(), classes, config.grouping)


def _kmeans_on_ranks(features_path: Path, ranks: int, out: Path) -> dict[str, Any]:
    """k-means (k=30, k-means++) of one epoch's features by one process and by `ranks` ranks: agreement, objective."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    command += ["-m", "benchmarks.scale", "kmeans", str(features_path), str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    ranked = json.loads(out.read_text())
    alone = _kmeans_child(features_path)
    same = float(np.mean(np.asarray(alone["assignments"]) == np.asarray(ranked["assignments"])))
    return {
        "ranks": ranks,
        "identical_assignments": round(same, 5),
        "objective_one": alone["loss"],
        "objective_ranks": ranked["loss"],
        "objective_relative_difference": abs(ranked["loss"] - alone["loss"]) / alone["loss"],
    }


def _kmeans_child(features_path: Path) -> dict[str, Any]:
    """k-means of the features on this rank's shard (in a process group: every rank's together)."""
    import torch

    from deepcluster import artifacts, distributed
    from deepcluster.kmeans import kmeans

    features = torch.from_numpy(artifacts.read_features(features_path))
    mine = features[distributed.shard(len(features))]
    clustering = kmeans(mine, 30, torch.Generator().manual_seed(0), 20, "k-means++")
    assignments = distributed.all_gather_rows(clustering.assignments)
    return {"assignments": assignments.tolist(), "loss": clustering.loss}


@contextmanager
def _store_dir(path: Path) -> Iterator[None]:
    """Runs ingest into `path` meanwhile, not into the user's input store."""
    before = os.environ.get("DEEPCLUSTER_STORE_DIR")
    os.environ["DEEPCLUSTER_STORE_DIR"] = str(path)
    try:
        yield
    finally:
        if before is None:
            del os.environ["DEEPCLUSTER_STORE_DIR"]
        else:
            os.environ["DEEPCLUSTER_STORE_DIR"] = before


def bench_scale(
    images: int,
    size: int,
    workers: int,
    folder: Path | None,
    epochs: bool,
    json_path: Path | None,
    ranks: int = 1,
    rank_epochs: int = 3,
    rank_images: int | None = None,
    growth: list[int] | None = None,
    growth_samples: int = 1000,
    growth_batch_size: int = Config.model_fields["batch_size"].default,
    growth_streamed_only: bool = False,
) -> dict[str, Any]:
    """Time ingest with 1 and `workers` processes (and a quarter of the images), and optionally the epochs,
    an epoch's time and memory at growing numbers of images, and 1 rank against `ranks`."""
    scratch = Path(tempfile.mkdtemp(prefix="deepcluster-bench-scale-"))
    try:
        if folder is None:
            folder = scratch / "images"
            synthetic_folder(folder, max([images, *(growth or [])]), size)
        files = len(store.list_folder(folder).files)
        if growth and max(growth) > files:
            raise ConfigError(f"--growth {max(growth)}: {folder} has {files} files")
        rows = []
        for count in sorted({1, workers}):
            row = _ingest(folder, size, count)
            row["bare_seconds"] = _bare_decode(folder, size, count)
            row["over_bare"] = round(row["seconds"] / row["bare_seconds"], 3)
            rows.append(row)
        rows.append(_ingest(folder, size, workers, limit=max(1, files // 4)))
        summary: dict[str, Any] = {
            "folder": str(folder),
            "image_size": size,
            "machine": runtime.machine_description(),
            "ingest": rows,
        }
        if epochs:
            with _store_dir(scratch / "store"):
                summary["epochs"] = _epochs(folder, size, scratch / "runs")
        if growth:
            summary["growth_samples"] = growth_samples
            summary["growth_batch_size"] = growth_batch_size
            inputs = ("streamed",) if growth_streamed_only else ("streamed", "held")
            summary["growth"] = _growth(
                folder, size, sorted(growth), inputs, growth_samples, growth_batch_size, scratch
            )
        if ranks > 1:
            summary["ranks"] = _ranks(ranks, rank_epochs, rank_images, scratch / "rank-runs")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(format_scale(summary))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_scale(summary: dict[str, Any]) -> str:
    lines = [
        f"ingest of {summary['folder']} at {summary['image_size']} pixels, {summary['machine']}",
        f"{'images':>8}{'workers':>9}{'seconds':>9}{'images/s':>10}{'peak MB':>9}{'worker MB':>11}{'store MB':>10}"
        f"{'bare loop s':>13}{'ratio':>7}",
    ]
    for row in summary["ingest"]:
        bare = f"{row['bare_seconds']:>13.2f}{row['over_bare']:>7.3f}" if "bare_seconds" in row else ""
        lines.append(
            f"{row['images']:>8}{row['workers']:>9}{row['seconds']:>9.2f}{row['images_per_second']:>10.1f}"
            f"{row['peak_rss_mb']:>9.0f}{row['peak_worker_rss_mb']:>11.0f}{row['store_bytes'] / 2**20:>10.1f}{bare}"
        )
    if "epochs" in summary:
        epochs = summary["epochs"]
        lines.append(
            f"one epoch: inputs held {epochs['held']['seconds']:.2f} s, streamed {epochs['streamed']['seconds']:.2f} s "
            f"(ratio {epochs['streamed_over_held']:.3f}); same train loss: {'yes' if epochs['same_loss'] else 'NO'}"
        )
    if "growth" in summary:
        lines.append(
            f"one epoch on the first N images, training on {summary['growth_samples']} of them in batches of "
            f"{summary['growth_batch_size']}:"
        )
        lines.append(f"{'images':>8}{'inputs':>10}{'input MB':>10}{'seconds':>9}{'extract s':>11}{'peak MB':>9}")
        for row in summary["growth"]:
            lines.append(
                f"{row['images']:>8}{row['inputs']:>10}{row['input_mb']:>10.0f}{row['seconds']:>9.1f}"
                f"{row['stage_seconds']['extract']:>11.1f}{row['peak_rss_mb']:>9.0f}"
            )
    if "ranks" in summary:
        ranked = summary["ranks"]
        count = ranked["kmeans"]["ranks"]
        one, many = ranked["1"], ranked[str(count)]
        lines.append(
            f"the sample, {ranked['epochs']} epochs: 1 rank {sum(one['epoch_seconds']):.1f} s of epochs, {count} ranks "
            f"{sum(many['epoch_seconds']):.1f} s (ratio {ranked['epoch_ratio']:.3f}); NMI between their final "
            f"assignments {ranked['nmi_between_runs']:.3f} (1 rank against itself on 1 thread: "
            f"{ranked['nmi_one_thread']:.3f}); NMI between their final groupings {ranked['nmi_between_groupings']:.3f} "
            f"(1 thread: {ranked['nmi_one_thread_groupings']:.3f}); final NMI vs labels "
            f"{one['nmi_labels_final']:.3f} / {many['nmi_labels_final']:.3f}"
        )
        kmeans = ranked["kmeans"]
        lines.append(
            f"k-means of the same features, 1 process vs {count} ranks: {kmeans['identical_assignments']:.2%} "
            f"identical assignments, objective difference {kmeans['objective_relative_difference']:.2e} (relative)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "kmeans":  # a rank of _kmeans_on_ranks, started by torchrun
        from deepcluster import distributed

        distributed.start(__import__("torch").device("cpu"))
        result = _kmeans_child(Path(sys.argv[2]))
        if distributed.is_writer():
            Path(sys.argv[3]).write_text(json.dumps(result))
        distributed.stop()
    elif sys.argv[1] == "epoch":  # a line of _growth
        print(json.dumps(_epoch_child(Path(sys.argv[2]))))
