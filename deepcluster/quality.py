"""The quality benchmark: train and evaluate fixed configurations with several seeds, and write
the mean and standard deviation of every score to docs/RESULTS.md.

Each configuration is a list of `deepcluster run` flags, so every line of the results names the
exact commands behind it. Runs are named after suite, configuration and seed and kept in the runs
directory: an interrupted benchmark continues where it stopped (finished runs are not retrained).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from deepcluster import artifacts
from deepcluster.artifacts import RunError, RunLayout
from deepcluster.report import metric_rows

# The straightforward DeepCluster of the paper: random top layer, PCA-whitening to 256, k-means from
# random points, crops + flips only.
PAPER = [
    *("--head", "linear", "--pca-dim", "256", "--kmeans-init", "random"),
    *("--crop-scale", "0.5,1", "--rotation", "0"),
]

SUITES: dict[str, dict[str, list[str]]] = {
    "sample": {
        "default": [],
        "paper": PAPER,
        "k-100": ["--k", "100"],
        "random-init": ["--kmeans-init", "random"],
        "no-rotation": ["--rotation", "0"],
    },
    # The IDX files are found in data/fashion-mnist/ or /usr/share/datasets/fashion-mnist/ (Debian's package).
    "fashion-mnist": {
        "default": ["--dataset", "fashion-mnist"],
        "paper": ["--dataset", "fashion-mnist", "--k", "100", *PAPER],
    },
}

SCORES = {
    "NMI": lambda run: run["evaluation"]["kmeans"]["nmi"],
    "ACC": lambda run: run["evaluation"]["kmeans"]["acc"],
    "ARI": lambda run: run["evaluation"]["kmeans"]["ari"],
    "NMI (trunk)": lambda run: run["evaluation"]["kmeans_trunk"]["nmi"],
    "kNN acc": lambda run: run["evaluation"]["knn_accuracy"],
    "probe acc": lambda run: run["evaluation"]["linear_probe_accuracy"],
    "NMI vs prev. epoch": lambda run: run["evaluation"]["run_nmi_previous"],
    "largest / fair share": lambda run: run["evaluation"]["run_largest_over_fair_share"],
    "minutes": lambda run: run["seconds"] / 60,
}


def run_suite(
    suite: str,
    seeds: list[int],
    runs_dir: Path,
    cli: Callable[[list[str]], int],
    extra: list[str],
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Train (or reuse) and evaluate the configurations `names` (default: all) of `suite` for every seed.

    cli: the `deepcluster` entry point (main). extra: flags added to every run (e.g. --epochs).
    Returns the raw results: per configuration, its commands and one record per seed.
    """
    if suite not in SUITES:
        raise RunError(f"unknown suite {suite!r}: expected one of {', '.join(SUITES)}")
    unknown = sorted(set(names or []) - set(SUITES[suite]))
    if unknown:
        raise RunError(f"suite {suite!r} has no configuration {', '.join(unknown)} (it has {', '.join(SUITES[suite])})")
    results: dict[str, Any] = {}
    for name, flags in SUITES[suite].items():
        if names and name not in names:
            continue
        runs = []
        for seed in seeds:
            run_id = f"quality-{suite}-{name}-seed{seed}"
            run_args = ["run", *flags, *extra, "--seed", str(seed), "--run-id", run_id, "--no-progress"]
            for args in (run_args, ["evaluate", run_id]):
                if cli(["--runs-dir", str(runs_dir), *args]) != 0:
                    raise RunError(f"`deepcluster {shlex.join(args)}` failed (see above)")
            layout = RunLayout(runs_dir, run_id)
            evaluation = artifacts.read_json(layout.evaluation)
            last_epoch = str(layout.completed_epochs()[-1])
            runs.append(
                {
                    "seed": seed,
                    "run_id": run_id,
                    "evaluation": evaluation["epochs"][last_epoch],
                    "baselines": evaluation["baselines"],
                    "seconds": sum(row["seconds"] for row in metric_rows(layout)),
                }
            )
        results[name] = {"command": ["deepcluster", "run", *flags, *extra], "runs": runs}
    return results


def machine() -> str:
    """The CPU model, its cores and the GPU if any, and the torch version, in words."""
    cpu = platform.machine()
    try:
        models = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = models[0].split(":", 1)[1].strip() if models else cpu
    except OSError:
        pass
    gpu = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, {gpu}; torch {torch.__version__}"


def mean_std(values: list[float]) -> str:
    """'mean ± std' (sample standard deviation; just the value for one run)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def suite_markdown(suite: str, results: dict[str, Any], command: str) -> str:
    """The suite's section of RESULTS.md: one line per configuration (mean ± std over seeds), the baselines."""
    header = ["configuration", *SCORES, "seeds"]
    lines = [
        f"## Suite `{suite}`",
        "",
        f"Produced by `{command}` on {datetime.now(UTC):%Y-%m-%d}, machine: {machine()}.",
        "Scores of the last epoch of every run (never an epoch picked by labels), mean ± standard deviation "
        "over seeds. NMI/ACC/ARI: k-means at k = number of classes on the features as the run clusters them; "
        "NMI (trunk): the same on the trunk features, which kNN and the linear probe use (`deepcluster evaluate`). "
        "Baselines: k-means on the raw pixels and on the Sobel-magnitude pixels, kNN on the same views of the "
        "network's (grayscale) inputs.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name, result in results.items():
        runs = result["runs"]
        cells = [mean_std([score(run) for run in runs]) for score in SCORES.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {', '.join(str(run['seed']) for run in runs)} |")
    baselines = next(iter(results.values()))["runs"][0]["baselines"]
    for name, scores in baselines.items():
        knn = f"{scores['knn_accuracy']:.3f}" if "knn_accuracy" in scores else ""
        cells = [f"{scores[key]:.3f}" for key in ("nmi", "acc", "ari")] + ["", knn] + [""] * (len(SCORES) - 5)
        lines.append(f"| baseline: {name} | " + " | ".join(cells) + " | |")
    lines += ["", "Commands (each run then `deepcluster evaluate RUN_ID`):", ""]
    for name, result in results.items():
        lines.append(f"- {name}: `{shlex.join(result['command'])} --seed SEED`")
    return "\n".join(lines) + "\n"


def write_results(path: Path, suite: str, section: str) -> None:
    """Replace (or add) the suite's section of the results file, keeping the other suites' sections."""
    begin, end = f"<!-- suite {suite} -->", f"<!-- end suite {suite} -->"
    text = path.read_text() if path.is_file() else RESULTS_PREAMBLE
    block = f"{begin}\n{section}{end}\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    artifacts.atomic_write_bytes(path, text.encode())


RESULTS_PREAMBLE = """# Clustering quality

Written by `deepcluster bench-quality` (one section per suite; rerunning a suite replaces its section).
Raw results per run: `docs/bench/quality-SUITE.json`.
"""


def save_raw(path: Path, results: dict[str, Any]) -> None:
    artifacts.atomic_write_bytes(path, json.dumps(results, indent=2).encode())
