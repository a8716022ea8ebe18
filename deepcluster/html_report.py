"""A run's HTML report (`deepcluster report`), written from its artifacts alone.

One page, index.html, with its figures as PNG files beside it: metric curves over the epochs,
cluster sizes over the epochs and for the chosen epoch, sample images of the largest clusters, a
confusion matrix against the labels (where there are labels), a 2-D projection of the epoch's
features coloured by cluster, where the time went, the config, the dataset and its fingerprint,
and whether every epoch's files still match their manifests. Every file is written atomically, the
page last, so a failed report never leaves a page pointing at missing figures.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from deepcluster import artifacts
from deepcluster.artifacts import RunLayout
from deepcluster.config import recorded_config
from deepcluster.metrics import contingency, largest_over_fair_share
from deepcluster.run_metrics import COLUMNS, epoch_metrics, flat_metrics, resolve_epoch

LARGEST_CLUSTERS = 12  # rows of sample images
SAMPLES_PER_CLUSTER = 12
SAMPLE_SCALE = 2  # each pixel of a sample image shown as a 2x2 block
PROJECTED_POINTS = 5000
REPORT_SEED = 0  # which images and points are shown: fixed, never chosen by looking at labels
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ddd; padding: 2px 8px; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } .ok { color: #1a7f37; } .bad { color: #c62828; font-weight: bold; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
"""


def write_report(layout: RunLayout, out_dir: Path | None = None, epoch: int | None = None) -> Path:
    """Write the report of a run (figures for `epoch`, default the last finished one); returns index.html."""
    artifacts.check_run(layout)
    epoch = resolve_epoch(layout, epoch)
    out_dir = _output_dir(out_dir or layout.report_dir)
    record = artifacts.read_run_record(layout)
    all_metrics = [epoch_metrics(layout, done) for done in layout.completed_epochs()]
    rows = [flat_metrics(metrics) for metrics in all_metrics]
    metrics = all_metrics[layout.completed_epochs().index(epoch)]
    clusters = artifacts.read_clusters(layout.assignments(epoch))
    labels = artifacts.load_array(layout.labels) if layout.labels.is_file() else None
    images = artifacts.load_array(layout.ingested_images, mmap=True)
    num_clusters = metrics["num_clusters"]
    sizes = np.bincount(clusters, minlength=num_clusters)

    sections = [
        _header(layout, record, epoch, len(rows)),
        _section(
            "Metrics over epochs", _figure(out_dir, "curves.png", _curves({layout.run_id: rows})) + _table_html(rows)
        ),
        _section(
            f"Cluster sizes (epoch {epoch})",
            _figure(out_dir, "sizes.png", _size_figure(rows, sizes, epoch))
            + f"<p>{num_clusters} clusters; smallest {sizes.min()}, largest {sizes.max()} images "
            f"({largest_over_fair_share(sizes):.2f}× a fair share); {int((sizes == 0).sum())} empty.</p>",
        ),
        _section(
            f"Sample images of the {min(LARGEST_CLUSTERS, num_clusters)} largest clusters (epoch {epoch})",
            _cluster_samples(out_dir, images, clusters, sizes, labels),
        ),
    ]
    if labels is not None:
        sections.append(
            _section(
                f"Clusters against labels (epoch {epoch})",
                _figure(out_dir, "confusion.png", _confusion(clusters, labels, num_clusters)),
            )
        )
    features = artifacts.read_features(layout.features(epoch))
    sections += [
        _section(
            f"Features of epoch {epoch}, projected to 2-D (PCA), coloured by cluster",
            _figure(out_dir, "projection.png", _projection(features, clusters, num_clusters)),
        ),
        _section(
            "Where the time went (seconds per stage and epoch)",
            _figure(out_dir, "stages.png", _stage_figure([metrics["stage_seconds"] for metrics in all_metrics]))
            + "<p>The writer's time (<code>write</code>) runs in the background, beside the next epoch's stages.</p>",
        ),
        _section("Evaluation against labels", _evaluation_html(layout)),
        _section("Integrity: files against their manifests", _verify_html(layout)),
        _section("Config", _key_values(record["config"])),
        _section("Dataset and environment", _key_values({**record["dataset"], **record["versions"]})),
    ]
    index = out_dir / "index.html"
    artifacts.atomic_write_bytes(index, _page(f"DeepCluster run {layout.run_id}", "".join(sections)).encode())
    return index


def write_comparison(
    runs: Mapping[str, Sequence[dict[str, Any]]], differing: Sequence[dict[str, Any]], out_dir: Path
) -> Path:
    """A page comparing runs (their metric rows by run id, the config keys that differ between them):
    the differing keys, last-epoch metrics, curves overlaid."""
    _output_dir(out_dir)
    last = [{"run": run, **rows[-1]} if rows else {"run": run} for run, rows in runs.items()]
    body = (
        f"<h1>DeepCluster runs compared: {html.escape(', '.join(runs))}</h1>"
        + _section("Config keys that differ", _table_html(differing) or "<p>none</p>")
        + _section("Last finished epoch", _table_html(last, ["run", *COLUMNS]))
        + _section("Metrics over epochs", _figure(out_dir, "curves.png", _curves(runs)))
    )
    index = out_dir / "index.html"
    artifacts.atomic_write_bytes(index, _page("DeepCluster runs compared", body).encode())
    return index


def differing_config(layouts: Sequence[RunLayout]) -> list[dict[str, Any]]:
    """One row per config key (and the dataset fingerprint) whose value is not the same in every run."""
    values = {}
    for layout in layouts:
        record = artifacts.read_run_record(layout)
        values[layout.run_id] = {
            **recorded_config(record["config"]).to_json_dict(),
            "dataset fingerprint": record["dataset"]["fingerprint"][:12],
        }
    keys = sorted({key for run_values in values.values() for key in run_values})
    return [
        {"key": key, **{run: str(run_values.get(key)) for run, run_values in values.items()}}
        for key in keys
        if len({str(run_values.get(key)) for run_values in values.values()}) > 1
    ]


# ---------------------------------------------------------------- page parts


def _output_dir(path: Path) -> Path:
    """`path`, created where missing; an existing file there is an error."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a directory: choose another output folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _page(title: str, body: str) -> str:
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )


def _header(layout: RunLayout, record: dict[str, Any], epoch: int, done: int) -> str:
    config, dataset = record["config"], record["dataset"]
    return (
        f"<h1>DeepCluster run <code>{html.escape(layout.run_id)}</code></h1>"
        f"<p>{done} of {config['epochs']} epochs finished; figures for epoch {epoch}. Dataset "
        f"<code>{html.escape(str(dataset['name']))}</code>, {dataset['num_images']} images, k = "
        f"{config['num_clusters']}, arch <code>{config['arch']}</code>, head <code>{config['head']}</code>, "
        f"trained on {html.escape(record['device'])} ({record.get('precision', 'fp32')}), created "
        f"{html.escape(record['created'])}. Artifacts: <code>{html.escape(str(layout.root.resolve()))}</code></p>"
    )


def _section(title: str, body: str) -> str:
    return f"<h2>{html.escape(title)}</h2>{body}"


def _figure(out_dir: Path, name: str, figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    artifacts.atomic_write_bytes(out_dir / name, buffer.getvalue())
    return f"<p><img src='{name}' alt='{name}'></p>"


def _table_html(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows as an HTML table (columns: those of the first row unless given); empty without rows."""
    if not rows:
        return ""
    columns = list(columns or rows[0])

    def cell(value: Any) -> str:
        if value is None:
            return "<td>-</td>"
        if isinstance(value, float):
            return f"<td class='num'>{value:.4f}</td>"
        return f"<td class='num'>{html.escape(str(value))}</td>"

    head = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
    body = "".join("<tr>" + "".join(cell(row.get(column)) for column in columns) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _key_values(values: dict[str, Any]) -> str:
    return _table_html([{"key": key, "value": str(value)} for key, value in sorted(values.items())])


def _evaluation_html(layout: RunLayout) -> str:
    if not layout.evaluation.is_file():
        return f"<p>Not evaluated: run <code>deepcluster evaluate {html.escape(layout.run_id)}</code>.</p>"
    from deepcluster.evaluate import format_evaluation, read_evaluation  # imports scikit-learn: only when needed

    evaluation = read_evaluation(layout)
    epochs = sorted(evaluation["epochs"], key=int)
    return "".join(
        f"<p>Epoch {epoch}:</p><pre>{html.escape(format_evaluation(evaluation, int(epoch)))}</pre>" for epoch in epochs
    )


def _verify_html(layout: RunLayout) -> str:
    lines = "".join(
        f"<tr><td>{files}</td>{_verify_status(problems)}</tr>"
        for files, problems in artifacts.verify_run(layout).items()
    )
    return f"<table><tr><th>files</th><th>status</th></tr>{lines}</table>"


def _verify_status(problems: list[str]) -> str:
    if not problems:
        return "<td class='ok'>verified</td>"
    return "<td class='bad'>" + "<br>".join(html.escape(problem) for problem in problems) + "</td>"


def _cluster_samples(
    out_dir: Path, images: np.ndarray, clusters: np.ndarray, sizes: np.ndarray, labels: np.ndarray | None
) -> str:
    """One strip of sample images per largest cluster, as PNG files, with its size (and its labels' purity)."""
    generator = np.random.default_rng(REPORT_SEED)
    parts = []
    for cluster in np.argsort(-sizes, kind="stable")[:LARGEST_CLUSTERS]:
        members = np.flatnonzero(clusters == cluster)
        if len(members) == 0:
            continue
        shown = np.sort(generator.choice(members, min(SAMPLES_PER_CLUSTER, len(members)), replace=False))
        name = f"cluster-{cluster:04d}.png"
        _write_strip(out_dir / name, images[shown])
        caption = f"cluster {cluster}: {sizes[cluster]} images"
        if labels is not None:
            counts = np.bincount(labels[members])
            caption += f"; most common label {counts.argmax()} ({counts.max() / len(members):.0%})"
        parts.append(f"<p>{caption}<br><img src='{name}' alt='{name}'></p>")
    return "".join(parts)


def _write_strip(path: Path, images: np.ndarray) -> None:
    """uint8 images (n, C, H, W) side by side, 2 pixels apart, each pixel scaled SAMPLE_SCALE times."""
    count, channels, height, width = images.shape
    strip = np.full((height, count * (width + 2) - 2, channels), 255, dtype=np.uint8)
    for position, image in enumerate(images):
        strip[:, position * (width + 2) : position * (width + 2) + width] = image.transpose(1, 2, 0)
    picture = Image.fromarray(strip[:, :, 0] if channels == 1 else strip)
    picture = picture.resize((picture.width * SAMPLE_SCALE, picture.height * SAMPLE_SCALE), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="png")
    artifacts.atomic_write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------- figures


def _curves(runs: Mapping[str, Sequence[dict[str, Any]]]) -> Figure:
    """The metric curves over epochs of one run, or of several overlaid (one colour per run)."""
    figure = Figure(figsize=(11, 6.5))
    axes = figure.subplots(2, 2)
    panels = [
        (axes[0, 0], "agreement with the previous epoch", [("NMI vs previous epoch", "nmi_previous")]),
        (axes[0, 1], "against labels (evaluation only)", [("NMI", "nmi"), ("ACC", "acc"), ("ARI", "ari")]),
        (axes[1, 0], "training loss (cross-entropy)", [("train loss", "train_loss")]),
        (axes[1, 1], "k-means objective (mean squared distance)", [("k-means loss", "kmeans_loss")]),
    ]
    colours = {run: f"C{index % 10}" for index, run in enumerate(runs)}
    for axis, title, series in panels:
        for run, rows in runs.items():
            for (label, key), style in zip(series, ("-", "--", ":"), strict=False):
                points = [(row["epoch"], row[key]) for row in rows if row[key] is not None]
                if points:
                    name = label if len(runs) == 1 else (run if len(series) == 1 else f"{run}: {label}")
                    epochs, values = zip(*points, strict=True)
                    colour = colours[run] if len(runs) > 1 else None
                    axis.plot(epochs, values, style, marker="o", markersize=3, color=colour, label=name)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if axis.lines and (len(series) > 1 or len(runs) > 1):
            axis.legend(fontsize=7)
        if not axis.lines:
            axis.text(0.5, 0.5, "no data (no labels, or a single epoch)", ha="center", transform=axis.transAxes)
    figure.tight_layout()
    return figure


def _size_figure(rows: Sequence[dict[str, Any]], sizes: np.ndarray, epoch: int) -> Figure:
    figure = Figure(figsize=(11, 3.5))
    over_time, histogram = figure.subplots(1, 2)
    epochs = [row["epoch"] for row in rows]
    over_time.plot(epochs, [row["max_size"] for row in rows], marker="o", markersize=3, label="largest")
    over_time.plot(epochs, [row["min_size"] for row in rows], marker="o", markersize=3, label="smallest")
    over_time.plot(epochs, [row["empty"] for row in rows], marker="o", markersize=3, label="empty (count)")
    over_time.set_title("cluster sizes over epochs", fontsize=10)
    over_time.set_xlabel("epoch")
    over_time.xaxis.set_major_locator(MaxNLocator(integer=True))
    over_time.legend(fontsize=8)
    over_time.grid(alpha=0.3)
    histogram.hist(sizes, bins=min(30, max(5, len(sizes) // 2)), color="#4c72b0")
    histogram.set_title(f"sizes of the {len(sizes)} clusters at epoch {epoch}", fontsize=10)
    histogram.set_xlabel("images in the cluster")
    histogram.set_ylabel("clusters")
    figure.tight_layout()
    return figure


def _confusion(clusters: np.ndarray, labels: np.ndarray, num_clusters: int) -> Figure:
    """Counts of (cluster, label); clusters ordered by their most common label, then by size."""
    counts = contingency(clusters, labels, num_clusters)
    num_labels = counts.shape[1]
    order = np.lexsort((-counts.sum(axis=1), counts.argmax(axis=1)))
    figure = Figure(figsize=(min(12, 2 + 0.5 * num_labels), min(14, 1.5 + 0.25 * num_clusters)))
    axis = figure.subplots()
    shown = axis.imshow(counts[order], aspect="auto", cmap="Blues")
    axis.set_xticks(range(num_labels))
    axis.set_yticks(range(num_clusters), [str(cluster) for cluster in order], fontsize=6 if num_clusters > 40 else 8)
    axis.set_xlabel("label")
    axis.set_ylabel("cluster")
    figure.colorbar(shown, ax=axis, label="images")
    figure.tight_layout()
    return figure


def _projection(features: np.ndarray, clusters: np.ndarray, num_clusters: int) -> Figure:
    generator = np.random.default_rng(REPORT_SEED)
    shown = np.sort(generator.choice(len(features), min(PROJECTED_POINTS, len(features)), replace=False))
    points = features[shown] - features[shown].mean(axis=0)
    _, _, directions = np.linalg.svd(points, full_matrices=False)
    projected = points @ directions[:2].T
    figure = Figure(figsize=(7, 6))
    axis = figure.subplots()
    axis.scatter(projected[:, 0], projected[:, 1], c=clusters[shown], cmap="turbo", vmin=0, vmax=num_clusters - 1, s=4)
    axis.set_xlabel("first principal component")
    axis.set_ylabel("second principal component")
    axis.set_title(f"{len(shown)} of {len(features)} images", fontsize=10)
    figure.tight_layout()
    return figure


def _stage_figure(stage_rows: Sequence[dict[str, float]]) -> Figure:
    """Stacked seconds per stage for each epoch (stage_rows: each epoch's stage_seconds), the writer beside."""
    stages = [name for name in stage_rows[0] if name not in ("epoch", "write")]
    figure = Figure(figsize=(11, 3.5))
    axis = figure.subplots()
    bottom = np.zeros(len(stage_rows))
    for stage in stages:
        values = np.array([row.get(stage, 0.0) for row in stage_rows])
        axis.bar(range(len(stage_rows)), values, bottom=bottom, label=stage)
        bottom += values
    if all("write" in row for row in stage_rows):  # the library loop, and older runs, record no writer time
        axis.plot(range(len(stage_rows)), [row["write"] for row in stage_rows], "k.--", label="write (background)")
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel("seconds")
    axis.legend(fontsize=8, ncol=4)
    figure.tight_layout()
    return figure
