"""The DeepCluster flow: ingest, preprocess, then per epoch
extract -> reduce -> cluster -> resample -> retrain -> evaluate -> commit.

Each epoch's artifacts are committed atomically, so running the flow again on the same run id
continues after the last finished epoch.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

import tasks
from deepcluster.artifacts import RunError, RunLayout, RunLock, default_runs_dir
from deepcluster.config import Config
from deepcluster.pipeline import DatasetInfo, configure_torch, resolve_device
from deepcluster.progress import progress_bar
from deepcluster.report import flat_metrics, format_table, metric_rows

Result = TypeVar("Result")
DEFAULT_CONFIG = Config()


def new_run_id() -> str:
    """A fresh run id: UTC time plus a random suffix, e.g. 20261126-153000-1a2b3c."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def _timed(seconds: dict[str, float], name: str, call: Callable[..., Result], *args: Any) -> Result:
    start = time.perf_counter()
    result = call(*args)
    seconds[name] = round(time.perf_counter() - start, 4)
    return result


@flow(name="deepcluster")
def deepcluster_flow(
    config: Config = DEFAULT_CONFIG,
    run_id: str | None = None,
    runs_dir: str | None = None,
    progress: bool | None = None,
) -> str:
    """Train DeepCluster for `config.epochs` epochs (continuing an existing run) and return its directory."""
    logger = get_run_logger()
    layout = RunLayout(Path(runs_dir) if runs_dir else default_runs_dir(), run_id or new_run_id())
    configure_torch(config)
    device = str(resolve_device(config.device))
    with RunLock(layout):
        info = tasks.ingest(config, layout)
        tasks.sobel_preprocess(layout, info.image_size)
        for removed in layout.discard_partial_epochs():
            logger.info("discarded the half-written epoch %s", removed.name)
        first_epoch = _next_epoch(layout)
        logger.info(
            "run %s: epochs %d..%d of %s on %s", layout.run_id, first_epoch, config.epochs - 1, layout.root, device
        )
        rows = metric_rows(layout)
        for epoch in progress_bar(range(first_epoch, config.epochs), "epochs", "epoch", progress):
            epoch_metrics = _run_epoch(layout, config, info, epoch, device, progress)
            tasks.commit_epoch(layout, epoch, epoch_metrics)
            rows.append(flat_metrics(epoch_metrics))
            logger.info("epoch %d done: %s", epoch, _epoch_line(rows[-1]))
            create_table_artifact(
                table=rows, key=_artifact_key(layout.run_id), description=f"Per-epoch metrics of run {layout.run_id}"
            )
    _publish_summary(layout, config, rows)
    return str(layout.root)


def _run_epoch(
    layout: RunLayout, config: Config, info: DatasetInfo, epoch: int, device: str, progress: bool | None
) -> dict[str, Any]:
    """One DeepCluster epoch, stage by stage, into the epoch's staging directory; returns its metrics."""
    seconds: dict[str, float] = {}
    raw = _timed(seconds, "extract", tasks.extract_features, layout, config, epoch, device, progress)
    features = _timed(seconds, "pca", tasks.pca_reduce, raw, config.pca_dim, device)
    assignments, kmeans_loss = _timed(seconds, "kmeans", tasks.cluster_kmeans, features, layout, config, epoch, device)
    sample = _timed(seconds, "resample", tasks.balanced_resample, assignments, config, epoch)
    train_loss = _timed(seconds, "train", tasks.retrain, layout, config, epoch, assignments, sample, device, progress)
    evaluation = _timed(seconds, "evaluate", tasks.evaluate_nmi, layout, epoch, assignments, config.num_clusters)
    return {
        "epoch": epoch,
        "num_images": info.num_images,
        "num_clusters": config.num_clusters,
        "train_loss": train_loss,
        "kmeans_loss": kmeans_loss,
        **evaluation,
        "stage_seconds": seconds,
    }


def _epoch_line(row: dict[str, Any]) -> str:
    """One epoch's flat metric row (see `flat_metrics`) as a log line."""
    parts = [f"train loss {row['train_loss']:.3f}", f"k-means loss {row['kmeans_loss']:.3f}"]
    if row["nmi_previous"] is not None:
        parts.append(f"NMI vs previous {row['nmi_previous']:.3f}")
    if row["nmi"] is not None:
        parts.append(f"NMI vs labels {row['nmi']:.3f}")
    parts.append(f"{row['seconds']:.1f} s")
    return ", ".join(parts)


def _next_epoch(layout: RunLayout) -> int:
    done = layout.completed_epochs()
    if done != list(range(len(done))):
        raise RunError(f"run {layout.run_id!r} has non-contiguous epochs {done}; it was altered by hand")
    return len(done)


def _artifact_key(run_id: str) -> str:
    return "deepcluster-" + re.sub(r"[^a-z0-9-]", "-", run_id.lower())


def _publish_summary(layout: RunLayout, config: Config, rows: list[dict[str, Any]]) -> None:
    last = rows[-1] if rows else {}
    markdown = "\n".join(
        [
            f"# DeepCluster run `{layout.run_id}`",
            f"- artifacts: `{layout.root.resolve()}`",
            f"- dataset: `{config.dataset}`, k = {config.num_clusters}, arch `{config.arch}`, epochs {len(rows)}",
            f"- last epoch: NMI vs labels {last.get('nmi')}, NMI vs previous {last.get('nmi_previous')}",
            "",
            "```",
            format_table(rows),
            "```",
        ]
    )
    create_markdown_artifact(
        markdown=markdown, key=_artifact_key(layout.run_id) + "-summary", description="Run summary"
    )
