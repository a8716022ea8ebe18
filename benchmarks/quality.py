"""The quality benchmark: train and evaluate fixed configurations with several seeds, and write
the mean and standard deviation of every score to docs/RESULTS.md.

Each configuration is a list of `deepcluster run` flags, so every line of the results names the
exact commands behind it. Runs are named after suite, configuration and seed and kept in the runs
directory: an interrupted benchmark continues where it stopped (finished runs are not retrained).
"""

from __future__ import annotations

import json
import math
import re
import shlex
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deepcluster import artifacts
from deepcluster.artifacts import RunLayout
from deepcluster.config import Config
from deepcluster.errors import RunError
from deepcluster.evaluate import final_scores
from deepcluster.run_metrics import metric_rows
from deepcluster.runtime import machine_description

# Crops of aspect ratio 3/4-4/3: torchvision's RandomResizedCrop's, so the paper's (the default is 1/2-2).
TORCHVISION_RATIO = ["--crop-ratio", "3/4,4/3"]

# The straightforward DeepCluster of the paper: random top layer, PCA-whitening to 256, k-means from
# random points, crops + flips only, one pass over the images an epoch; grouped by k-means.
PAPER = [
    *("--head", "linear", "--pca-dim", "256", "--kmeans-init", "random"),
    *("--crop-scale", "0.5,1", "--rotation", "0", "--views", "1", "--min-epoch-samples", "0", "--grouping", "kmeans"),
    *("--neighbours", "0", "--batch-size", "256", *TORCHVISION_RATIO, "--self-label", "0", "--jitter", "0"),
]
FASHION_MNIST = ["--dataset", "fashion-mnist"]  # found in data/fashion-mnist/ or Debian's /usr/share/datasets/
# In a configuration's flags: the number of groups a user of the dataset asks for (its classes; Suite.groups_of).
GROUPS = "{groups}"


# Each changes one choice of the default: the measured ablations of docs/RESULTS.md.
ABLATIONS: dict[str, list[str]] = {
    "one-view": ["--views", "1"],
    "crops-30": ["--crop-scale", "0.3,1"],  # crops of 30-100% of the area
    "crops-80": ["--crop-scale", "0.8,1"],  # crops of 80-100% of the area
    "ratio-torchvision": TORCHVISION_RATIO,  # crops of aspect ratio 3/4-4/3 instead of 1/2-2
    "ratio-3": ["--crop-ratio", "0.333,3"],  # crops of aspect ratio 1/3-3
    "neighbours-0": ["--neighbours", "0"],  # hard targets: each image's own cluster alone
    "neighbours-20": ["--neighbours", "20"],  # soft targets over twice as many neighbours
    "extra-k-10": ["--extra-k", "10"],
    # a further clustering at the number of groups the user asks for (3 on a 3-class set), beside the 30
    "extra-k-groups": ["--extra-k", GROUPS],
    "heads-3": ["--heads", "3"],  # DeepCluster-v2's several prototype sets: 3 clusterings at k, each its own seed
    "balanced": ["--assignment", "balanced"],  # SeLa's equal-share pseudo-labels
    # the soft targets' neighbours found in the convolutional representation instead of the clustered features
    "neighbours-conv": ["--neighbour-features", "representation"],
    "instance": ["--instance-weight", "0.5"],
    "cosine": ["--lr-schedule", "cosine"],  # learning rate decayed to 0 over the run
    "epochs-15": ["--epochs", "15"],
    "epochs-6": ["--epochs", "6"],  # six epochs instead of ten: the first six of a default run, trained alone
    "k-100": ["--k", "100"],  # over-clustering: 100 pseudo-classes instead of 30
    "lr-x2": ["--lr", "0.1"],  # twice the paper's learning rate
    "batch-256": ["--batch-size", "256"],  # the paper's batch: half the optimiser steps (learning rate scaled)
    "batch-64": ["--batch-size", "64"],  # twice the optimiser steps an epoch
    # DeepCluster-v2's multi-crop: besides the two views, 2 crops of 20-60% of the area at half the side
    "small-crops-2": ["--small-crops", "2"],
    "intensity": ["--intensity"],  # the grayscale beside the Sobel gradients
    "temperature-x2": ["--temperature", "0.2"],  # softer prototype logits: twice DeepCluster-v2's 0.1, the default
    "temperature-half": ["--temperature", "0.05"],  # sharper prototype logits: half the default 0.1
    "rotation-0": ["--rotation", "0"],  # no rotation of the training crops (the paper's augmentation)
    "erase-50": ["--erase", "0.5"],  # random erasing of half the training crops
    "erase-25": ["--erase", "0.25"],  # random erasing of a quarter of the training crops
    "jitter-0": ["--jitter", "0"],  # the training crops' brightness and contrast as they are (jitter: 0.5-1.5)
    "jitter-80": ["--jitter", "0.8"],  # factors of 0.2-1.8: the strength of SimCLR's and DeepCluster-v2's jitter
    # each epoch's k-means seeded afresh (k-means++), as the paper does, instead of from the previous epoch's clusters
    "kmeans-fresh": ["--kmeans-init", "k-means++"],
    "weight-decay-5e-4": ["--weight-decay", "5e-4"],  # fifty times the paper's weight decay
    "self-label-0": ["--self-label", "0"],  # no self-labelling before the final grouping
    "self-label-10": ["--self-label", "10"],  # ten passes of self-labelling instead of six
    # Leiden's communities as the final grouping, the self-labelling seeded from them too, instead of snn-sized
    "grouping-leiden": ["--grouping", "leiden"],
}


@dataclass(frozen=True)
class Suite:
    """Labelled datasets (each: the `run` flags that select it) and configurations (each: `run` flags). `groups`:
    the number of classes of each dataset whose flags name no `--classes`; `groups_of` gives every dataset's, the
    number of groups a user of it asks for, what GROUPS stands for."""

    datasets: dict[str, list[str]]
    configurations: dict[str, list[str]]
    groups: dict[str, int] = field(default_factory=dict)

    def groups_of(self, dataset: str) -> int | None:
        """The dataset's number of groups: the classes its `--classes` flag names, else `groups`' (None if neither)."""
        flags = self.datasets[dataset]
        if "--classes" in flags:
            return len(flags[flags.index("--classes") + 1].split(","))
        return self.groups.get(dataset)


SUITES: dict[str, Suite] = {
    # Small labelled sets of the kinds a user brings, for choosing defaults on more than one dataset.
    "dev": Suite(
        datasets={
            "sample": [],
            "fmnist-3-8-9": [*FASHION_MNIST, "--classes", "3,8,9", "--limit", "5000"],
            "fmnist-1-4-7": [*FASHION_MNIST, "--classes", "1,4,7", "--limit", "5000"],
            "fmnist-0-2-4-6-8": [*FASHION_MNIST, "--classes", "0,2,4,6,8", "--limit", "5000"],
            "fmnist-10k": [*FASHION_MNIST, "--limit", "10000"],
            "digits": ["--dataset", "digits"],
        },
        groups={"sample": 3, "fmnist-10k": 10, "digits": 10},
        configurations={
            "default": [],
            **ABLATIONS,
            # only change something where images are smaller than 28 pixels or fewer than 5,000 (digits)
            "native-size": ["--image-size", "8"],
            "one-pass": ["--min-epoch-samples", "0"],
            # the defaults before this suite existed (but for the final grouping's features), and the paper's set-up
            "previous-defaults": [
                "--views",
                "1",
                "--crop-scale",
                "0.3,1",
                "--min-epoch-samples",
                "0",
                "--grouping",
                "kmeans",
                "--neighbours",
                "0",
                "--batch-size",
                "256",
                *TORCHVISION_RATIO,
                "--self-label",
                "0",
                "--jitter",
                "0",
            ],
            "paper": PAPER,
        },
    ),
    # Sets of the same kinds outside the dev suite, to check whether choices made on it carry; the final grouping's
    # graph size was chosen on both suites together.
    "check": Suite(
        datasets={
            "fmnist-2-4-6": [*FASHION_MNIST, "--classes", "2,4,6", "--limit", "5000"],  # pullover, coat, shirt
            "fmnist-5-7-9": [*FASHION_MNIST, "--classes", "5,7,9", "--limit", "5000"],  # sandal, sneaker, boot
        },
        configurations={"default": [], **ABLATIONS},
    ),
    # Sets run on the defaults once a change to them is made, never while choosing: the check suite has been chosen
    # on too (the final grouping's graph size), so these are the sets that say whether the defaults carry.
    "holdout": Suite(
        datasets={
            "fmnist-0-3-6": [*FASHION_MNIST, "--classes", "0,3,6", "--limit", "5000"],  # T-shirt, dress, shirt
            "fmnist-1-3-5-7-9": [*FASHION_MNIST, "--classes", "1,3,5,7,9", "--limit", "5000"],
            "fmnist-test-10k": [*FASHION_MNIST, "--split", "test"],  # the 10,000 test images, 10 classes
        },
        # neighbours-conv: the best of the dev suite as a whole (seeds 0-2), not the default for the memory it
        # holds on large collections; run here once to say whether its gain carries. jitter-0: the defaults before
        # brightness and contrast jitter, beside them on the same machine. grouping-leiden: an option measured on the
        # dev and check suites and not chosen, run here after that to say how it carries
        configurations={
            "default": [],
            "neighbours-conv": ABLATIONS["neighbours-conv"],
            "jitter-0": ABLATIONS["jitter-0"],
            "grouping-leiden": ABLATIONS["grouping-leiden"],
        },
        groups={"fmnist-test-10k": 10},
    ),
    "fashion-mnist": Suite(
        datasets={"fashion-mnist": FASHION_MNIST},
        configurations={"default": [], "paper": ["--k", "100", *PAPER]},
        groups={"fashion-mnist": 10},
    ),
}


def run_suite(
    suite: str,
    seeds: list[int],
    runs_dir: Path,
    cli: Callable[[list[str]], int],
    extra: list[str],
    names: list[str] | None = None,
    datasets: list[str] | None = None,
    produced_by: str = "",
) -> dict[str, Any]:
    """Train (or reuse) and evaluate the configurations `names` (default: all) of `suite` on its datasets
    `datasets` (default: all), for every seed.

    cli: the `deepcluster` entry point (main). extra: flags added to every run (e.g. --epochs). produced_by:
    the benchmark command, recorded with each result. Returns the raw results: per dataset and configuration,
    its `run` command, the benchmark command and one record per seed.
    """
    if suite not in SUITES:
        raise RunError(f"unknown suite {suite!r}: expected one of {', '.join(SUITES)}")
    chosen = SUITES[suite]
    _refuse_unknown(f"suite {suite!r} has no", names, datasets, chosen.configurations, chosen.datasets)
    commands = {  # all made before the first run: one that cannot be made stops the suite before it trains
        (dataset, name): [*data_flags, *_groups_filled_in(flags, chosen.groups_of(dataset), dataset), *extra]
        for dataset, data_flags in chosen.datasets.items()
        if not datasets or dataset in datasets
        for name, flags in chosen.configurations.items()
        if not names or name in names
    }
    results: dict[str, Any] = {}
    for (dataset, name), command in commands.items():
        runs = [
            _run_seed(cli, runs_dir, f"quality-{suite}-{dataset}-{name}-seed{seed}", command, seed) for seed in seeds
        ]
        results.setdefault(dataset, {})[name] = {
            "command": ["deepcluster", "run", *command],
            "produced_by": f"`{produced_by}` ({datetime.now(UTC):%Y-%m-%d}, {machine_description()})",
            "runs": runs,
        }
    return results


def evaluate_again(
    suite: str,
    raw: dict[str, Any],
    runs_dir: Path,
    cli: Callable[[list[str]], int],
    names: list[str] | None = None,
    datasets: list[str] | None = None,
    produced_by: str = "",
) -> dict[str, Any]:
    """Evaluate again, without training, the runs that `raw` (the saved results of `suite`) records for the
    configurations `names` and the datasets `datasets` (default: all; names as the results spell them), each
    at the epoch it was evaluated at: its scores by today's evaluation (after a grouping changed, say). Every
    such run must still be in `runs_dir`, which is checked before any is evaluated. Returns those records, each
    naming `produced_by` after the command that trained its runs."""
    recorded_names = dict.fromkeys(name for records in raw.values() for name in records)
    _refuse_unknown(f"the results of suite {suite!r} hold no", names, datasets, recorded_names, raw)
    chosen = {
        dataset: {name: record for name, record in records.items() if not names or name in names}
        for dataset, records in raw.items()
        if not datasets or dataset in datasets
    }
    recorded = [run for records in chosen.values() for record in records.values() for run in record["runs"]]
    absent = [run["run_id"] for run in recorded if not RunLayout(runs_dir, run["run_id"]).root.is_dir()]
    if absent:
        raise RunError(
            f"{len(absent)} of the {len(recorded)} runs to evaluate again are not in {runs_dir}: {', '.join(absent)}"
        )
    stamp = f"`{produced_by}` ({datetime.now(UTC):%Y-%m-%d}, {machine_description()})"
    results: dict[str, Any] = {}
    for dataset, records in chosen.items():
        for name, record in records.items():
            earlier = [part for part in re.split(r"; (?=`)", record["produced_by"]) if "--evaluate-again" not in part]
            runs = [
                {**run, **_evaluated(cli, runs_dir, run["run_id"], run["evaluation"]["epoch"])}
                for run in record["runs"]
            ]
            results.setdefault(dataset, {})[name] = {
                **record,
                "produced_by": "; ".join([*earlier, stamp]),
                "runs": runs,
            }
    return results


def _refuse_unknown(
    holder: str,
    names: list[str] | None,
    datasets: list[str] | None,
    known_names: Iterable[str],
    known_datasets: Iterable[str],
) -> None:
    """A RunError naming the asked configurations and datasets that are not among the known ones, and those known."""
    for kind, asked, known in (
        ("configuration", names, list(known_names)),
        ("dataset", datasets, list(known_datasets)),
    ):
        unknown = sorted(set(asked or []) - set(known))
        if unknown:
            raise RunError(f"{holder} {kind} {', '.join(unknown)} (it has {', '.join(known)})")


def _groups_filled_in(flags: list[str], groups: int | None, dataset: str) -> list[str]:
    """`flags` with GROUPS replaced by the dataset's number of groups; a RunError where the suite gives none."""
    if GROUPS in flags and groups is None:
        raise RunError(f"a configuration names the number of groups, but the suite gives none for {dataset!r}")
    return [str(groups) if flag == GROUPS else flag for flag in flags]


def _run_seed(
    cli: Callable[[list[str]], int], runs_dir: Path, run_id: str, flags: list[str], seed: int
) -> dict[str, Any]:
    """Train (or finish) one run and evaluate its last epoch; its evaluation, baselines and training time."""
    run_args = ["run", *flags, "--seed", str(seed), "--run-id", run_id, "--no-progress"]
    if cli(["--runs-dir", str(runs_dir), *run_args]) != 0:
        raise RunError(f"`deepcluster {shlex.join(run_args)}` failed (see above)")
    layout = RunLayout(runs_dir, run_id)
    return {
        "seed": seed,
        "run_id": run_id,
        **_evaluated(cli, runs_dir, run_id, layout.completed_epochs()[-1]),
        "seconds": sum(row["seconds"] for row in metric_rows(layout)),
        "machine": machine_description(),
    }


def _evaluated(cli: Callable[[list[str]], int], runs_dir: Path, run_id: str, epoch: int) -> dict[str, Any]:
    """Evaluate `epoch` of a run: its evaluation and the baselines."""
    args = ["evaluate", run_id, "--epoch", str(epoch)]
    if cli(["--runs-dir", str(runs_dir), *args]) != 0:
        raise RunError(f"`deepcluster {shlex.join(args)}` failed (see above)")
    evaluation = artifacts.read_json(RunLayout(runs_dir, run_id).evaluation)
    return {"evaluation": evaluation["epochs"][str(epoch)], "baselines": evaluation["baselines"]}


def _grouped(features: str, method: str) -> Callable[[dict[str, Any]], float]:
    """NMI of a grouping method; NaN (shown as '-') for a run evaluated before that method existed."""
    return lambda run: run["evaluation"]["groupings"][features].get(method, {}).get("nmi", math.nan)


SCORES: dict[str, Callable[[dict[str, Any]], float]] = {
    "NMI": lambda run: final_scores(run["evaluation"])["nmi"],
    "ACC": lambda run: final_scores(run["evaluation"])["acc"],
    "NMI k-means": _grouped("conv", "kmeans"),
    "NMI spectral": _grouped("conv", "spectral"),
    "NMI snn": _grouped("conv", "snn"),
    "NMI snn-kmeans": _grouped("conv", "snn-kmeans"),
    "NMI leiden": _grouped("conv", "leiden"),
    "NMI k-means, clustered": _grouped("clustered", "kmeans"),
    "kNN acc": lambda run: run["evaluation"]["knn_accuracy"],
    "probe acc": lambda run: run["evaluation"]["linear_probe_accuracy"],
    "NMI vs prev. epoch": lambda run: run["evaluation"]["run_nmi_previous"],
    "largest / fair share": lambda run: run["evaluation"]["run_largest_over_fair_share"],
    "minutes": lambda run: run["seconds"] / 60,
}
BASELINE_SCORES: dict[str, Callable[[dict[str, Any]], float]] = {
    "NMI": lambda scores: scores["groupings"]["kmeans"]["nmi"],
    "ACC": lambda scores: scores["groupings"]["kmeans"]["acc"],
    "NMI k-means": lambda scores: scores["groupings"]["kmeans"]["nmi"],
    "NMI spectral": lambda scores: scores["groupings"]["spectral"]["nmi"],
    "NMI snn": lambda scores: scores["groupings"].get("snn", {}).get("nmi", math.nan),
    "NMI snn-kmeans": lambda scores: scores["groupings"].get("snn-kmeans", {}).get("nmi", math.nan),
    "NMI leiden": lambda scores: scores["groupings"].get("leiden", {}).get("nmi", math.nan),
    "kNN acc": lambda scores: scores["knn_accuracy"],
}
GOAL_MARGIN = 0.10  # the learned clustering should beat the better plain k-means baseline by this much


def mean_std(values: Sequence[float | None]) -> str:
    """'mean ± std' (sample standard deviation; just the value for one run; '-' where a run has none)."""
    numbers = [value for value in values if value is not None and not math.isnan(value)]
    if len(numbers) < len(values):
        return "-"
    if len(numbers) == 1:
        return f"{numbers[0]:.3f}"
    return f"{statistics.mean(numbers):.3f} ± {statistics.stdev(numbers):.3f}"


def suite_markdown(suite: str, results: dict[str, Any]) -> str:
    """The suite's section of RESULTS.md: with several datasets, a summary of the default configuration
    against the goals and a table of every configuration by dataset; then per dataset one line per
    configuration (mean ± std and the worst seed) and the baselines."""
    lines = [
        f"## Suite `{suite}`",
        "",
        "Produced by:",
        "",
        *(f"- {producer}" for producer in _producers(results)),
        "",
        (
            "Scores of the last epoch of every run (never an epoch picked by labels), mean ± standard deviation "
            "over seeds, and the worst seed. NMI/ACC: the run's convolutional features grouped into k = number of "
            "classes by the final grouping (`grouping`) that the configuration's command gives today (where a run "
            "was evaluated before that grouping existed: the run's own), of the convnet self-labelled first where the "
            "configuration self-labels (`--self-label`); NMI k-means / spectral / snn / snn-kmeans / leiden: by each "
            "grouping of the convnet's own features; NMI k-means, clustered: k-means on the features the run "
            "clusters each epoch (`deepcluster evaluate`). kNN and the linear probe use the convolutional features. "
            "Baselines: the same groupings of the raw pixels and of the Sobel-magnitude pixels (NMI/ACC: plain "
            "k-means, the baseline a user tries first), kNN on the same views of the network's (grayscale) inputs."
        ),
        "",
    ]
    results = {
        dataset: {name: scored_as_configured_today(result) for name, result in configurations.items()}
        for dataset, configurations in results.items()
    }
    if len(results) > 1:
        lines += _summary(results) + _by_dataset(results)
    for dataset, configurations in results.items():
        lines += [f"### {dataset}", ""] + _dataset_table(configurations)
    lines += ["Commands (each run then `deepcluster evaluate RUN_ID`):", ""]
    for dataset, configurations in results.items():
        for name, result in configurations.items():
            lines.append(f"- {dataset}, {name}: `{shlex.join(result['command'])} --seed SEED`")
    return "\n".join(lines) + "\n"


DEFAULT_GROUPING = Config.model_fields["grouping"].default  # a `run` command's final grouping without `--grouping`
# the final grouping's earlier defaults, the newest first: runs evaluated before today's default existed (on machines
# whose runs were not kept, so they cannot be scored again) are scored by the newest of these that they hold
EARLIER_DEFAULT_GROUPINGS = ("snn-kmeans",)


def scored_as_configured_today(result: dict[str, Any]) -> dict[str, Any]:
    """`result` with its runs scored by the final grouping that its `run` command gives today (its `--grouping`,
    else the default), where every run's evaluation holds that grouping's scores: the final grouping changes no
    training, so a default chosen after a run trained applies to it. Without `--grouping`, where the runs lack the
    default's scores, by the newest earlier default they all hold; otherwise as the runs were evaluated."""
    command = result.get("command", [])
    if "--grouping" in command:
        methods: tuple[str, ...] = (command[command.index("--grouping") + 1],)
    else:
        methods = (DEFAULT_GROUPING, *EARLIER_DEFAULT_GROUPINGS)
    for method in methods:
        if all(method in run["evaluation"].get("groupings", {}).get("conv", {}) for run in result["runs"]):
            runs = [{**run, "evaluation": {**run["evaluation"], "grouping": method}} for run in result["runs"]]
            return {**result, "runs": runs}
    return result


def _producers(results: dict[str, Any]) -> list[str]:
    """The benchmark commands behind `results`, each with its date and machine, once each (a record whose runs
    came from several commands names them separated by "; ")."""
    records = (result["produced_by"] for configurations in results.values() for result in configurations.values())
    return list(dict.fromkeys(command for record in records for command in re.split(r"; (?=`)", record)))


def _values(result: dict[str, Any], score: str) -> list[float]:
    return [SCORES[score](run) for run in result["runs"]]


def _baselines(configurations: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return next(iter(configurations.values()))["runs"][0]["baselines"]


def _summary(results: dict[str, Any]) -> list[str]:
    """The default configuration on every dataset, each goal of the quality suite with its figures."""
    lines = [
        "### Default configuration against the goals",
        "",
        (
            "| dataset | NMI | worst seed | plain k-means baseline (pixels / Sobel) | goal: baseline + 0.10 | "
            "NMI, final grouping: learned / pixels / Sobel | NMI k-means: learned / pixels / Sobel | "
            "kNN: learned (worst) / pixels / Sobel |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset, configurations in results.items():
        if "default" not in configurations:
            continue
        default = configurations["default"]
        base = _baselines(configurations)
        pixels, sobel = (BASELINE_SCORES["NMI"](base[name]) for name in ("pixels", "sobel_pixels"))
        goal = max(pixels, sobel) + GOAL_MARGIN
        nmi = _values(default, "NMI")
        met = "met" if statistics.mean(nmi) >= goal and min(nmi) > max(pixels, sobel) else "not met"

        knn = _values(default, "kNN acc")
        lines.append(
            f"| {dataset} | {mean_std(nmi)} | {min(nmi):.3f} | {pixels:.3f} / {sobel:.3f} | {goal:.3f}: {met} | "
            f"{_versus_final(default, base)} | {_versus(default, base, 'NMI k-means')} | "
            f"{statistics.mean(knn):.3f} ({min(knn):.3f}) / "
            + " / ".join(f"{BASELINE_SCORES['kNN acc'](base[n]):.3f}" for n in base)
            + " |"
        )
    return lines + ["", "'met': the mean NMI reaches the goal and the worst seed is above the baseline.", ""]


def _versus(default: dict[str, Any], base: dict[str, dict[str, Any]], score: str) -> str:
    """'learned / pixels / Sobel' for one score: the mean over seeds beside each baseline."""
    learned = statistics.mean(_values(default, score))
    return f"{learned:.3f} / " + " / ".join(f"{BASELINE_SCORES[score](scores):.3f}" for scores in base.values())


def _versus_final(default: dict[str, Any], base: dict[str, dict[str, Any]]) -> str:
    """'learned / pixels / Sobel' NMI, each grouped by the default's final grouping (`grouping`), and its name."""
    method = default["runs"][0]["evaluation"]["grouping"]
    learned = statistics.mean(_values(default, "NMI"))
    baselines = " / ".join(
        f"{scores['groupings'].get(method, {}).get('nmi', math.nan):.3f}" for scores in base.values()
    )
    return f"{learned:.3f} / {baselines} ({method})"


def _by_dataset(results: dict[str, Any]) -> list[str]:
    """Mean NMI (worst seed) of every configuration on every dataset, and its mean over the datasets. Where
    other configurations ran fewer seeds than the default, the default is shown on those seeds too, so that
    each compares with it on the same seeds."""
    names = list(dict.fromkeys(name for configurations in results.values() for name in configurations))
    default_seeds = {seed for configurations in results.values() for seed in _seeds(configurations.get("default"))}
    subsets = {
        _seeds(result)
        for configurations in results.values()
        for name, result in configurations.items()
        if name != "default" and set(_seeds(result)) < default_seeds
    }
    lines = [
        "### Every configuration on every dataset: NMI, mean (worst seed)",
        "",
        "| configuration | " + " | ".join(results) + " | mean over datasets |",
        "|" + "---|" * (len(results) + 2),
    ]
    for name in names:
        lines.append(_by_dataset_row(results, name, name, None))
        if name == "default":
            for seeds in sorted(subsets):
                label = f"default, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
                lines.append(_by_dataset_row(results, label, name, seeds))
    return lines + [""]


def _seeds(result: dict[str, Any] | None) -> tuple[int, ...]:
    return tuple(sorted(run["seed"] for run in result["runs"])) if result else ()


def _by_dataset_row(results: dict[str, Any], label: str, name: str, seeds: tuple[int, ...] | None) -> str:
    """One row of the by-dataset table: configuration `name` (only the runs of `seeds`, if given)."""
    cells, means = [], []
    for configurations in results.values():
        runs = configurations[name]["runs"] if name in configurations else []
        nmi = [SCORES["NMI"](run) for run in runs if seeds is None or run["seed"] in seeds]
        if not nmi:
            cells.append("")
            continue
        means.append(statistics.mean(nmi))
        cells.append(f"{statistics.mean(nmi):.3f} ({min(nmi):.3f})")
    overall = f"{statistics.mean(means):.3f}" if len(means) == len(results) else ""
    return f"| {label} | " + " | ".join(cells) + f" | {overall} |"


def _dataset_table(configurations: dict[str, Any]) -> list[str]:
    header = ["configuration", *SCORES, "worst NMI", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in configurations.items():
        cells = [mean_std(_values(result, score)) for score in SCORES]
        seeds = ", ".join(str(run["seed"]) for run in result["runs"])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {min(_values(result, 'NMI')):.3f} | {seeds} |")
    for name, scores in _baselines(configurations).items():
        cells = [f"{BASELINE_SCORES[score](scores):.3f}" if score in BASELINE_SCORES else "" for score in SCORES]
        lines.append(f"| baseline: {name} | " + " | ".join(cells) + " | | |")
    return lines + [""]


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


def save(suite: str, results: dict[str, Any], raw: Path, out: Path, machine_named: bool = False) -> str:
    """Merge `results` into the raw results saved in `raw` and write them, and the suite's section of the results
    file `out`; returns the section. The saved results are read only now, under a lock on each file (`.NAME.lock`
    beside it): two benchmarks that end together each merge into what the other saved, and neither's results are
    lost. machine_named: as `merge` takes it."""
    with artifacts.FileLock(_lock_path(out)), artifacts.FileLock(_lock_path(raw)):
        merged = merge(load_raw(raw), results, machine_named)
        section = suite_markdown(suite, merged)
        write_results(out, suite, section)
        save_raw(raw, merged)
    return section


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def load_raw(path: Path) -> dict[str, Any]:
    """Raw results saved by an earlier benchmark (empty when there are none)."""
    return artifacts.read_json(path) if path.is_file() else {}


def merge(earlier: dict[str, Any], new: dict[str, Any], machine_named: bool = False) -> dict[str, Any]:
    """Earlier results with the new ones added; datasets and configurations keep their first order. A new result
    replaces the earlier one of its dataset and configuration, but where both ran the same `run` command:
    - on the same machine, the earlier seeds that did not run again are kept beside the new ones (a suite's seeds
      may run in several calls), and both benchmark commands are named;
    - on another machine, the earlier result is kept whole beside the new one, named after its machine (e.g.
      `default (AMD EPYC (AVX2))`), and the new one joins the seeds of its own machine kept so before: the same
      seed trains a different network on a CPU with other vector instructions, so one mean never mixes machines.
      With `machine_named`, the earlier result keeps the plain name instead and the new one is named after its
      machine, joining the seeds of its machine kept so before (to add a second machine's runs beside the rows
      the results file describes as its configuration's)."""
    merged = {dataset: dict(configurations) for dataset, configurations in earlier.items()}
    for dataset, configurations in new.items():
        for name, result in configurations.items():
            records = merged.setdefault(dataset, {})
            before = records.get(name)
            if before is not None and before["command"] == result["command"] and not _same_machine(before, result):
                if machine_named:
                    name = _machine_named(name, result)
                    before = records.get(name)
                else:
                    records[_unused_name(records, _machine_named(name, before))] = before
                    before = records.get(_machine_named(name, result))  # this machine's, kept so by an earlier merge
                    if before is not None and _same_runs(before, result):
                        del records[_machine_named(name, result)]
            if before is not None and _same_runs(before, result):
                result = _with_earlier_seeds(before, result)
            records[name] = result
    return merged


def _same_runs(before: dict[str, Any], result: dict[str, Any]) -> bool:
    """Whether two results are seeds of one configuration: the same `run` command on the same machine."""
    return before["command"] == result["command"] and _same_machine(before, result)


def machine_of(result: dict[str, Any]) -> str:
    """The machine a result's runs trained on, as `machine_description` gave it: "an unnamed machine" where they do
    not say, "several machines" where they name more than one."""
    machines = {run.get("machine", "an unnamed machine") for run in result["runs"]}
    return machines.pop() if len(machines) == 1 else "several machines"


def _same_machine(one: dict[str, Any], other: dict[str, Any]) -> bool:
    return machine_of(one) == machine_of(other)


def _machine_named(name: str, result: dict[str, Any]) -> str:
    """A configuration's name with the CPU (or the words) that `machine_of` gives for the result."""
    return f"{name} ({machine_of(result).split(',')[0]})"


def _with_earlier_seeds(before: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """`result` with the runs of `before` whose seeds it did not run again."""
    seeds = {run["seed"] for run in result["runs"]}
    kept = [run for run in before["runs"] if run["seed"] not in seeds]
    if not kept:
        return result
    runs = sorted([*kept, *result["runs"]], key=lambda run: run["seed"])
    return {**result, "runs": runs, "produced_by": f"{before['produced_by']}; {result['produced_by']}"}


def _unused_name(records: dict[str, Any], name: str) -> str:
    """`name`, or where a record has it, the first of `name 2`, `name 3`, ... that none has."""
    candidates = (name if count == 1 else f"{name} {count}" for count in range(1, len(records) + 2))
    return next(candidate for candidate in candidates if candidate not in records)


def save_raw(path: Path, results: dict[str, Any]) -> None:
    artifacts.atomic_write_bytes(path, json.dumps(results, indent=2).encode())
