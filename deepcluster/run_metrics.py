"""Reading a run's per-epoch metrics back as flat rows and plain-text tables."""

from __future__ import annotations

from typing import Any

from deepcluster import artifacts
from deepcluster.artifacts import RunLayout
from deepcluster.errors import RunError

COLUMNS = (
    "epoch",
    "train_loss",
    "kmeans_loss",
    "nmi_previous",
    "nmi",
    "acc",
    "ari",
    "min_size",
    "max_size",
    "empty",
    "seconds",
)


def flat_metrics(epoch_metrics: dict[str, Any]) -> dict[str, Any]:
    """One epoch's metrics.json as a flat row (label metrics are None where there are no labels)."""
    labels = epoch_metrics.get("labels") or {}
    sizes = epoch_metrics["cluster_sizes"]
    return {
        "epoch": epoch_metrics["epoch"],
        "train_loss": epoch_metrics["train_loss"],
        "kmeans_loss": epoch_metrics["kmeans_loss"],
        "nmi_previous": epoch_metrics["nmi_previous"],
        "nmi": labels.get("nmi"),
        "acc": labels.get("acc"),
        "ari": labels.get("ari"),
        "min_size": sizes["min"],
        "max_size": sizes["max"],
        "empty": sizes["empty"],
        "seconds": _epoch_seconds(epoch_metrics["stage_seconds"]),
    }


def _epoch_seconds(stage_seconds: dict[str, float]) -> float:
    """The epoch's wall time (runs written before it was recorded: the sum of its stages)."""
    return stage_seconds["epoch"] if "epoch" in stage_seconds else sum(stage_seconds.values())


def epoch_metrics(layout: RunLayout, epoch: int) -> dict[str, Any]:
    path = layout.metrics(epoch)
    if not path.is_file():
        done = layout.completed_epochs()
        raise RunError(f"epoch {epoch} of run {layout.run_id!r} is not finished (finished: {_ranges(done) or 'none'})")
    return artifacts.read_json(path)


def resolve_epoch(layout: RunLayout, epoch: int | None) -> int:
    """`epoch`, checked to be finished, or the run's last finished epoch."""
    if epoch is None:
        done = layout.completed_epochs()
        if not done:
            raise RunError(f"run {layout.run_id!r} has no finished epoch yet")
        return done[-1]
    epoch_metrics(layout, epoch)  # raises, naming the finished epochs, when it is not finished
    return epoch


def metric_rows(layout: RunLayout) -> list[dict[str, Any]]:
    """Flat metric rows of every finished epoch, in order."""
    return [flat_metrics(epoch_metrics(layout, epoch)) for epoch in layout.completed_epochs()]


def format_table(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    """Rows as an aligned plain-text table; floats with 4 decimals, None as '-'."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    cells = [list(columns)] + [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(text.rjust(width) for text, width in zip(line, widths, strict=True)) for line in cells)


def _ranges(epochs: list[int]) -> str:
    return f"{epochs[0]}-{epochs[-1]}" if epochs else ""
