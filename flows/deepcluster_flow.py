"""The DeepCluster flow: ingest, preprocess, then per epoch the library's epoch loop (`epoch.run_epoch`)
extract -> reduce -> cluster -> targets -> resample -> train -> score -> commit, each stage a Prefect task.

The epoch tasks pass tensors in memory; features, assignments and the checkpoint go to a background
writer as soon as they exist, and the epoch is committed atomically once they are written, while the
next epoch computes. Running the flow again on the same run id continues after the last committed epoch.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import torch
from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

import tasks
from deepcluster import artifacts, ranks, runs
from deepcluster.artifacts import ArtifactWriter, RunLayout, RunLock, default_runs_dir, device_lock
from deepcluster.config import Config, build_config
from deepcluster.epoch import run_epoch
from deepcluster.errors import DivergedError
from deepcluster.progress import progress_bar
from deepcluster.run_metrics import flat_metrics, format_table, metric_rows
from deepcluster.runtime import configure_torch, resolve_device
from deepcluster.stages import Session
from deepcluster.stopping import reclaim_signals

DEFAULT_CONFIG = Config()


def new_run_id() -> str:
    """A fresh run id: UTC time plus a random suffix, e.g. 20261126-153000-1a2b3c."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def flow_run_run_id() -> str:
    """The run id of a flow run started without one, from the flow run itself, so that a retry of the flow run
    (Prefect keeps its id) continues the same run directory: the time the flow run was created and the last 8
    digits of its id, e.g. 20261126-153000-1a2b3c4d. Outside a flow run: new_run_id."""
    from prefect.runtime import flow_run

    return _run_id_of_flow_run(flow_run.id) if flow_run.id else new_run_id()


@cache
def _run_id_of_flow_run(flow_run_id: str) -> str:
    """flow_run_run_id of one flow run, asked of the server once per process (the name and the flow need it)."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        created = client.read_flow_run(uuid.UUID(flow_run_id)).created
    when = f"{created.astimezone(UTC):%Y%m%d-%H%M%S}" if created else "flowrun"
    return f"{when}-{uuid.UUID(flow_run_id).hex[-8:]}"


def flow_run_name() -> str:
    """The flow run's name in Prefect: the run id and the dataset, e.g. `20261126-153000-1a2b3c4d fashion-mnist`."""
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    config = parameters.get("config") or {}
    dataset = config.get("dataset", DEFAULT_CONFIG.dataset) if isinstance(config, dict) else config.dataset
    dataset = (parameters.get("overrides") or {}).get("dataset", dataset)
    return f"{parameters.get('run_id') or flow_run_run_id()} {Path(str(dataset)).name}"


# The result (a small JSON document) is stored by Prefect (PREFECT_LOCAL_STORAGE_PATH), so a finished flow
# run's `state.result()` gives it back from the API.
@flow(name="deepcluster", flow_run_name=flow_run_name, persist_result=True, result_serializer="json")
def deepcluster_flow(
    config: Config = DEFAULT_CONFIG,
    run_id: str | None = None,
    runs_dir: str | None = None,
    progress: bool | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train DeepCluster for `config.epochs` epochs (continuing an existing run). Returns the run's directory
    (`run_dir`), its id, its number of epochs and the last epoch's metrics (`last_epoch`, flat).

    overrides: config keys that replace the ones of `config`, key by key (a deployment's config stays but for
    them). Without a run_id, the run id comes from the flow run, so a retry continues the same run. Runs take
    turns on a device: a run that finds another one training on its device waits for it (artifacts.device_lock)."""
    logger = get_run_logger()
    reclaim_signals()  # run from the `deepcluster` command: Ctrl-C and SIGTERM stop it at once, cleanly
    if overrides:
        config = build_config({**config.to_json_dict(), **overrides})
    layout = RunLayout(Path(runs_dir) if runs_dir else default_runs_dir(), run_id or flow_run_run_id())
    configure_torch(config)
    device = _device_name(resolve_device(config.device))

    def waiting(holder: str) -> None:
        logger.info("a device of the run is busy (%s): waiting for it", holder)

    with RunLock(layout), ExitStack() as devices:
        for name in _devices_of_ranks(device, config):
            devices.enter_context(device_lock(name, layout.run_id, on_wait=waiting))
        info = tasks.ingest(config, layout)
        _record_flow_run(layout)
        tasks.sobel_preprocess(layout, info.image_size)
        for removed in layout.discard_partial_epochs():
            logger.info("discarded the half-written epoch %s", removed.relative_to(layout.root))
        artifacts.check_run(layout)  # nothing altered is trained on
        first_epoch = len(layout.completed_epochs())  # check_run refused a gap
        logger.info(
            "run %s: epochs %d..%d of %s on %s", layout.run_id, first_epoch, config.epochs - 1, layout.root, device
        )
        rows = metric_rows(layout)

        def publish(metrics: dict[str, Any], done: str) -> None:
            rows.append(flat_metrics(metrics))
            logger.info("epoch %d %s: %s", metrics["epoch"], done, _epoch_line(rows[-1]))
            create_table_artifact(
                table=rows, key=_artifact_key(layout.run_id), description=f"Per-epoch metrics of run {layout.run_id}"
            )

        if first_epoch < config.epochs and config.ranks > 1:
            logger.info("training on %d ranks: %s", config.ranks, " ".join(ranks.launch_command(layout, config)))
            tasks.train_on_ranks(layout, config, lambda metrics: publish(metrics, "committed"), logger.info)
        elif first_epoch < config.epochs:
            session = tasks.load_session(layout, config, first_epoch, device)
            with ArtifactWriter() as writer:
                outputs = runs.RunOutputs(layout, writer, session.labels)
                for epoch in progress_bar(range(first_epoch, config.epochs), "epochs", "epoch", progress):
                    publish(
                        _run_epoch(layout, session, epoch, outputs, progress), "computed (committed in the background)"
                    )
                start = time.perf_counter()
                writer.flush()
                logger.info("artifacts written; waited %.2f s for the writer at the end", time.perf_counter() - start)
        if rows and config.groups is not None:
            path = tasks.write_groups(layout, config.groups, config.grouping, device)
            logger.info("the last epoch's images in %d groups: %s", config.groups, path)
        report = tasks.write_report(layout) if rows else None
    _publish_summary(layout, config, rows, report)
    last = rows[-1] if rows else None
    return {"run_dir": str(layout.root.resolve()), "run_id": layout.run_id, "epochs": len(rows), "last_epoch": last}


@flow(
    name="deepcluster",
    flow_run_name=flow_run_name,
    persist_result=True,
    result_serializer="json",
    retries=2,
    retry_delay_seconds=300,
)
def deepcluster_flow_with_retries(
    config: Config = DEFAULT_CONFIG,
    run_id: str | None = None,
    runs_dir: str | None = None,
    progress: bool | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """deepcluster_flow, retried by Prefect twice, 5 minutes apart, if it fails (the scheduled deployment's
    entrypoint). Each retry continues the run after its last committed epoch: a retried flow run keeps its
    id, hence its run id."""
    return deepcluster_flow.fn(config, run_id, runs_dir, progress, overrides)


def _run_epoch(
    layout: RunLayout, session: Session, epoch: int, outputs: runs.RunOutputs, progress: bool | None
) -> dict[str, Any]:
    """The epoch loop with each stage as a Prefect task and its outputs written into the run (committed in the
    background); a divergence is reported with the run's id."""
    try:
        return run_epoch(session, epoch, progress, stage=tasks.run_as_task, outputs=outputs)
    except DivergedError as error:
        raise DivergedError(f"run {layout.run_id!r}: {error}".replace("RUN_ID", layout.run_id)) from None


def _epoch_line(row: dict[str, Any]) -> str:
    """One epoch's flat metric row (see `flat_metrics`) as a log line."""
    parts = [f"train loss {row['train_loss']:.3f}", f"k-means loss {row['kmeans_loss']:.3f}"]
    if row["nmi_previous"] is not None:
        parts.append(f"NMI vs previous {row['nmi_previous']:.3f}")
    if row["nmi"] is not None:
        parts.append(f"NMI vs labels {row['nmi']:.3f}")
    parts.append(f"{row['seconds']:.1f} s")
    return ", ".join(parts)


def _record_flow_run(layout: RunLayout) -> None:
    """Record in run.json the Prefect flow run working on the run (`flow_runs`, once per flow run) and the runs
    directory it works in (`runs_dir`, absolute: it depends on the worker's environment and parameters)."""
    from prefect.runtime import flow_run

    record = artifacts.read_run_record(layout)
    flow_runs = record.get("flow_runs", [])
    if flow_run.id and flow_run.id not in flow_runs:
        flow_runs = [*flow_runs, flow_run.id]
    updated = {**record, "flow_runs": flow_runs, "runs_dir": str(layout.runs_dir.resolve())}
    if updated != record:
        artifacts.write_json(layout.run_json, updated)


def _devices_of_ranks(device: str, config: Config) -> list[str]:
    """The devices this machine's ranks train on: one GPU each (cuda:0, cuda:1, ...), or the one device."""
    if device.startswith("cuda") and config.nproc_per_node > 1:
        return [f"cuda:{index}" for index in range(config.nproc_per_node)]
    return [device]


def _device_name(device: torch.device) -> str:
    """The device a run trains on, as named by its device lock: "cpu", "cuda:0", ..."""
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def _artifact_key(run_id: str) -> str:
    return "deepcluster-" + re.sub(r"[^a-z0-9-]", "-", run_id.lower())


# The report's figures shown in the run's summary artifact, so that the Prefect UI shows them without access to
# the worker's files (embedded as data URIs, about 200 kB in all).
SUMMARY_FIGURES = {
    "curves.png": "Metrics over epochs",
    "sizes.png": "Cluster sizes",
    "confusion.png": "Clusters against labels",
}


def _publish_summary(layout: RunLayout, config: Config, rows: list[dict[str, Any]], report: Path | None) -> None:
    """The run's summary with the report's main figures (markdown) and its HTML report (a link) as Prefect
    artifacts."""
    last = rows[-1] if rows else {}
    report_line = f"- report: [{report.resolve()}]({report.resolve().as_uri()})" if report else "- report: none yet"
    lines = [
        f"# DeepCluster run `{layout.run_id}`",
        f"- artifacts: `{layout.root.resolve()}`",
        report_line,
        f"- dataset: `{config.dataset}`, k = {config.num_clusters}, arch `{config.arch}`, epochs {len(rows)}",
        f"- last epoch: NMI vs labels {_rounded(last.get('nmi'))}, "
        f"NMI vs previous {_rounded(last.get('nmi_previous'))}",
        "",
        "```",
        format_table(rows),
        "```",
    ]
    for name, title in SUMMARY_FIGURES.items():
        figure = report.parent / name if report else None
        if figure and figure.is_file():
            encoded = base64.b64encode(figure.read_bytes()).decode()
            lines += ["", f"## {title} (epoch {last['epoch']})", "", f"![{title}](data:image/png;base64,{encoded})"]
    markdown = "\n".join(lines)
    create_markdown_artifact(
        markdown=markdown, key=_artifact_key(layout.run_id) + "-summary", description="Run summary"
    )
    if report:
        create_link_artifact(
            link=report.resolve().as_uri(),
            link_text=f"report of run {layout.run_id}",
            key=_artifact_key(layout.run_id) + "-report",
            description="HTML report: curves, cluster sizes and samples, projection, integrity",
        )


def _rounded(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
