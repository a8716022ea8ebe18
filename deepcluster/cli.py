"""The `deepcluster` command: run, resume, join, runs, inspect, verify, evaluate, report, compare, predict, group,
bench, bench-quality, bench-kmeans and bench-scale (`deepcluster --help`).

Only `run`, `resume`, `bench` and `bench-quality` import Prefect (the flow), inside the command, so the other
commands start fast and the library stays free of Prefect.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import numpy as np

from deepcluster import artifacts, runtime
from deepcluster.artifacts import RunLayout, default_runs_dir, find_run, list_runs, validate_run_id
from deepcluster.config import RANK_KEYS, Config, GroupingMethod, build_config, load_config_file, recorded_config
from deepcluster.errors import ConfigError, DeepClusterError, RunError
from deepcluster.run_metrics import epoch_metrics, flat_metrics, format_table, metric_rows, resolve_epoch
from deepcluster.stopping import stop_cleanly

NO_PCA = "none"  # --pca-dim none: L2 normalisation only (config pca_dim null)
BENCH_EPOCHS = 3  # epoch 0 warms up; the medians are over epochs 1 and 2
USER_ERRORS = (DeepClusterError, FileNotFoundError, NotADirectoryError)

# The run flags are the Config keys with dashes, but for these shorter names
FLAG_NAMES = {"num_clusters": "k", "num_heads": "heads", "extra_clusters": "extra-k"}


def _integers(flag: str) -> Callable[[str], list[int]]:
    """An argparse type for `flag`: comma-separated integers, e.g. 0,1,2."""

    def parse(text: str) -> list[int]:
        try:
            return [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} expects comma-separated integers like 0,1,2, got {text!r}"
            ) from None

    return parse


def _pca_dim(text: str) -> int | str:
    if text.lower() == "none":
        return NO_PCA
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--pca-dim expects an integer or 'none', got {text!r}") from None


def _crop_range(flag: str) -> Callable[[str], list[float]]:
    """The parser of a crop's area or aspect ratio range flag: two numbers or fractions, e.g. 0.3,1 or 3/4,4/3."""

    def parse(text: str) -> list[float]:
        try:
            low, high = (float(Fraction(part)) for part in text.split(","))
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(
                f"{flag} expects two numbers like 0.3,1 or 3/4,4/3, got {text!r}"
            ) from None
        return [low, high]

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepcluster", description="DeepCluster as a Prefect workflow.", parents=[_shared_options(None)]
    )
    shared = _shared_options(argparse.SUPPRESS)  # after the command's name: set only where given
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    progress = argparse.ArgumentParser(add_help=False)
    progress.add_argument(
        "--progress", dest="progress", action="store_true", default=None, help="always show progress bars"
    )
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress bars")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, *parents: argparse.ArgumentParser, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, parents=[shared, *parents])

    run = command("run", progress, help="train a new run, or continue one with --run-id")
    _add_config_flags(run)
    run.add_argument("--run-id", help="name of the run (letters, digits, - and _); continues it if it exists")
    run.add_argument(
        "--evaluate", action="store_true", help="then `deepcluster evaluate` the last epoch (labelled datasets)"
    )

    resume = command("resume", progress, help="continue a run after its last finished epoch")
    resume.add_argument("run_id")
    resume.add_argument("--epochs", type=int, help="extend the run to this many epochs")
    resume.add_argument("--lr", type=float, help="a new learning rate from the next epoch on (recorded in run.json)")
    for key in sorted(RANK_KEYS):
        field = Config.model_fields[key]
        if field.annotation is bool:
            flag = argparse.BooleanOptionalAction
            resume.add_argument("--" + key.replace("_", "-"), action=flag, default=None, help=field.description)
        else:
            kind = int if field.annotation is int else str
            resume.add_argument("--" + key.replace("_", "-"), type=kind, help=field.description)

    join = command("join", help="on another machine: start its ranks of a run that trains on several (nnodes > 1)")
    join.add_argument("run_id")
    join.add_argument("--node-rank", type=int, required=True, help="this machine's index, 1..nnodes-1")

    command("runs", help="list runs with epochs done and last metrics")

    inspect = command("inspect", help="metrics of a run (table over epochs) or of one epoch")
    inspect.add_argument("run_id")
    inspect.add_argument("--epoch", type=int)
    inspect.add_argument("--json", action="store_true", help="print JSON")

    verify = command("verify", help="re-hash every artifact against the manifests")
    verify.add_argument("run_id")

    evaluate = command(
        "evaluate",
        device,
        help="score a finished epoch against the labels: k-means at k = classes (NMI/ACC/ARI), kNN and "
        "linear probe on frozen features, k-means and kNN on pixels as baselines; writes evaluation.json",
    )
    evaluate.add_argument("run_id")
    evaluate.add_argument("--epoch", type=int, help="default: the last finished epoch")
    evaluate.add_argument("--json", action="store_true", help="print the epoch's evaluation as JSON")

    report = command(
        "report", help="write a run's HTML report (curves, cluster sizes and samples, projection, integrity)"
    )
    report.add_argument("run_id")
    report.add_argument("--out", type=Path, help="directory for index.html and its figures (default RUN/report)")
    report.add_argument("--epoch", type=int, help="the epoch the figures show (default: the last finished)")

    compare = command(
        "compare", help="runs side by side: the config keys that differ, last metrics, metric curves overlaid"
    )
    compare.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="two or more runs")
    compare.add_argument(
        "--out", type=Path, default=Path("compare"), help="directory for index.html (default compare/)"
    )

    predict = command(
        "predict",
        device,
        progress,
        help="assign new images (a folder or a dataset name) to the clusters of a run's epoch; writes Parquet",
    )
    predict.add_argument("run_id")
    predict.add_argument("images", help="a folder of images, or a dataset name (fashion-mnist, mnist, ...)")
    predict.add_argument("--epoch", type=int, help="default: the last finished epoch")
    predict.add_argument("--data-dir", type=Path, help="directory holding the dataset's files (dataset names)")
    predict.add_argument("--split", choices=["train", "test"], default="train", help="dataset split (default train)")
    predict.add_argument("--classes", type=_integers("--classes"), help="keep only these labels, e.g. 0,1,2")
    predict.add_argument("--limit", type=int, help="keep only the first N images")
    predict.add_argument(
        "--out", type=Path, help="Parquet file to write (default: RUN_ID-epochNNNN-predictions.parquet here)"
    )
    predict.add_argument("--overwrite", action="store_true", help="replace the --out file if it exists")

    group = command(
        "group", device, help="group a run's images into K groups on the learned features (writes RUN/groups/)"
    )
    group.add_argument("run_id")
    group.add_argument("--groups", type=int, required=True, help="how many groups")
    group.add_argument("--method", choices=get_args(GroupingMethod), default=Config().grouping, help="grouping method")
    group.add_argument("--epoch", type=int, help="default: the last finished epoch")

    bench = command("bench", help="time the flow (all artifacts written) against the plain library loop, per stage")
    _add_config_flags(bench)
    bench.add_argument("--rounds", type=int, default=2, help="alternating library/flow rounds (default 2)")
    bench.add_argument("--json-out", type=Path, help="also write the summary to this JSON file")

    quality = command(
        "bench-quality",
        help="train and evaluate the quality suite's configurations over seeds; write docs/RESULTS.md",
    )
    quality.add_argument(
        "--suite",
        default="dev",
        help="dev (default: six small labelled sets), check (two more, for checking the defaults), holdout (three "
        "more, run on the defaults only) or fashion-mnist",
    )
    quality.add_argument(
        "--seeds", type=_integers("--seeds"), default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)"
    )
    quality.add_argument("--configs", help="comma-separated configurations of the suite (default: all)")
    quality.add_argument("--datasets", help="comma-separated datasets of the suite (default: all)")
    quality.add_argument("--epochs", type=int, help="train every configuration this many epochs")
    quality.add_argument(
        "--evaluate-again",
        action="store_true",
        help="train nothing: evaluate again the runs that the raw results record (of --configs and --datasets, "
        "named as the results name them), at the epochs recorded, and rewrite their scores (--seeds does not apply)",
    )
    quality.add_argument(
        "--machine-named",
        action="store_true",
        help="where a configuration's results under its plain name (e.g. `default`) came from another machine, "
        "they keep that name and these are named after this machine (`default (CPU)`); without it, these take the "
        "plain name and the earlier ones are renamed after their machine",
    )
    quality.add_argument("--out", type=Path, default=Path("docs/RESULTS.md"), help="results file to update")
    quality.add_argument(
        "--json-out",
        type=Path,
        help="raw results, merged with what the file already holds (default docs/bench/quality-SUITE.json)",
    )

    scale = command("bench-scale", help="time the ingest of an image folder into the input store, and streamed epochs")
    scale.add_argument("--folder", type=Path, help="a folder of images (default: a synthetic one is written)")
    scale.add_argument("--images", type=int, default=2000, help="images of the synthetic folder (default 2000)")
    scale.add_argument("--image-size", type=int, default=64, help="input size the images are stored at (default 64)")
    scale.add_argument("--workers", type=int, default=runtime.cpu_count(), help="decoding processes (default: cores)")
    scale.add_argument("--epochs", action="store_true", help="also time an epoch held in memory against one streamed")
    scale.add_argument(
        "--ranks", type=int, default=1, help="also train the sample on 1 rank and on this many (CPU processes)"
    )
    scale.add_argument("--rank-epochs", type=int, default=3, help="epochs of each of those runs (default 3)")
    scale.add_argument(
        "--rank-images",
        type=int,
        help="a quick check: those runs on the sample's first N images, one pass an epoch",
    )
    scale.add_argument(
        "--growth",
        type=_integers("--growth"),
        help="also one epoch on the first N images, streamed and held, for each N of a comma-separated list "
        "(e.g. 10000,50000,200000: a synthetic folder gets the largest N), with its peak memory",
    )
    scale.add_argument(
        "--growth-samples", type=int, default=1000, help="images trained on in each of those epochs (default 1000)"
    )
    scale.add_argument(
        "--growth-batch-size",
        type=int,
        default=Config.model_fields["batch_size"].default,
        help="the batch of those epochs, which sets their training's memory (default: the run default, %(default)s)",
    )
    scale.add_argument(
        "--growth-streamed-only", action="store_true", help="those epochs streamed only, none with the inputs held"
    )
    scale.add_argument("--json-out", type=Path, help="also write the results to this JSON file")

    bench_kmeans = command(
        "bench-kmeans", device, help="time the project's k-means against faiss and scikit-learn on synthetic points"
    )
    bench_kmeans.add_argument("--n", type=int, default=100_000, help="number of points")
    bench_kmeans.add_argument("--dim", type=int, default=256)
    bench_kmeans.add_argument("--k", type=int, default=1000)
    bench_kmeans.add_argument("--iters", type=int, default=20, help="at most this many Lloyd iterations")
    bench_kmeans.add_argument("--seed", type=int, default=0)
    bench_kmeans.add_argument(
        "--neighbours",
        type=int,
        default=10,
        help="also time the exact search for every point's M nearest neighbours (soft targets); 0: skip",
    )
    bench_kmeans.add_argument(
        "--sklearn-init",
        choices=["both", "random", "k-means++", "none"],
        default="both",
        help="scikit-learn initialisations to time (random: the same scheme as ours; k-means++: its default)",
    )
    bench_kmeans.add_argument("--no-faiss", action="store_true", help="skip faiss")
    bench_kmeans.add_argument("--json-out", type=Path, help="also write the results to this JSON file")
    return parser


def _shared_options(default: Any) -> argparse.ArgumentParser:
    """The options of every command, accepted before and after the command's name."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--runs-dir", type=Path, default=default, help="where runs live (default: $DEEPCLUSTER_RUNS_DIR or runs/)"
    )
    shared.add_argument(
        "--verbose",
        action="store_true",
        default=default,
        help="show Prefect's reports of a failed run, tracebacks included",
    )
    return shared


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Config key (`--num-clusters` is `--k`, see FLAG_NAMES), with the key's description; a flag
    left out leaves the key to --config or its default."""
    for key, field in Config.model_fields.items():
        flag = "--" + FLAG_NAMES.get(key, key.replace("_", "-"))
        options: dict[str, Any] = {"dest": key, "default": None, "help": field.description}
        annotation = field.annotation
        choices = get_args(annotation) if get_origin(annotation) is Literal else ()
        if choices:
            options["choices"] = choices
        elif annotation is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif key == "pca_dim":
            options["type"] = _pca_dim
        elif key in ("crop_scale", "small_crop_scale", "crop_ratio"):
            options["type"] = _crop_range(flag)
        elif _tuple_of_ints(annotation):
            options["type"] = _integers(flag)
        else:
            options["type"] = next((kind for kind in (int, float, Path, str) if _allows(annotation, kind)), str)
        parser.add_argument(flag, **options)
    parser.add_argument("--config", type=Path, help="JSON file of config keys; flags override it")


def _tuple_of_ints(annotation: Any) -> bool:
    """Whether a field's annotation is `tuple[int, ...]` or that `| None`."""
    return any(
        get_origin(each) is tuple and get_args(each)[:1] == (int,) for each in [annotation, *get_args(annotation)]
    )


def _allows(annotation: Any, kind: type) -> bool:
    """Whether a field's annotation is `kind` or `kind | None`."""
    return annotation is kind or kind in get_args(annotation)


def config_from_args(args: argparse.Namespace) -> Config:
    values: dict[str, Any] = load_config_file(args.config) if args.config else {}
    for key in Config.model_fields:
        value = getattr(args, key)
        if value is not None:
            values[key] = None if value == NO_PCA else value
    return build_config(values)


class QuietFailures(logging.Filter):
    """Drops Prefect's reports of a failed task or flow run (with their tracebacks): the command prints the
    error once, as one line, and an unexpected error still ends with its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR or record.getMessage().startswith("Finished in state Failed"))


def quiet_failures(quiet: bool) -> None:
    """Install (or, with quiet False, remove) QuietFailures on the flow's and tasks' run loggers."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        for existing in [each for each in logger.filters if isinstance(each, QuietFailures)]:
            logger.removeFilter(existing)
        if quiet:
            logger.addFilter(QuietFailures())


def run_flow(
    config: Config, run_id: str | None, runs_dir: Path | None, progress: bool | None, evaluate: bool = False
) -> int:
    from flows import load_flow

    deepcluster_flow = load_flow()
    result = deepcluster_flow(
        config=config, run_id=run_id, runs_dir=str(runs_dir or default_runs_dir()), progress=progress
    )
    root = Path(result["run_dir"])
    layout = RunLayout(root.parent, root.name)
    rows = metric_rows(layout)
    print(
        f"\nrun {layout.run_id}: {len(rows)} epochs, artifacts in {root}, report in {layout.report_dir / 'index.html'}"
    )
    print(format_table(rows[-1:]))
    if evaluate:
        if not layout.labels.is_file():
            print(f"\nnot evaluated: {config.dataset} has no labels")
            return 0
        print_evaluation(layout, None, config.device, as_json=False)
        from deepcluster.html_report import write_report

        print(f"report updated with the evaluation: {write_report(layout)}")
    return 0


def command_run(args: argparse.Namespace) -> int:
    if args.run_id is not None:
        validate_run_id(args.run_id)  # before Prefect starts
    return run_flow(config_from_args(args), args.run_id, args.runs_dir, args.progress, args.evaluate)


def command_resume(args: argparse.Namespace) -> int:
    layout = find_run(args.run_id, args.runs_dir)
    values = recorded_config(artifacts.read_run_record(layout)["config"]).to_json_dict()
    for key in ("epochs", "lr", *sorted(RANK_KEYS)):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    return run_flow(build_config(values, recorded=True), args.run_id, layout.runs_dir, args.progress)


def command_join(args: argparse.Namespace) -> int:
    from deepcluster.ranks import join

    return join(find_run(args.run_id, args.runs_dir), args.node_rank)


def command_bench(args: argparse.Namespace) -> int:
    from benchmarks.speed import bench

    if args.epochs is None:
        args.epochs = BENCH_EPOCHS
    if args.rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {args.rounds}")
    config = config_from_args(args)
    runtime.resolve_device(config.device)  # a clear error before any child process starts
    bench(config, args.rounds, args.json_out)
    return 0


def bench_quality_command(args: argparse.Namespace) -> str:
    """The bench-quality command as the results name it: the words that matter, quoted for a shell (a
    configuration's name can hold spaces and brackets), after the variables that chose the CPU kernels, if set."""
    words = [*runtime.kernel_limits(), "deepcluster", "bench-quality", "--suite", args.suite]
    words += ["--evaluate-again"] if args.evaluate_again else ["--seeds", ",".join(map(str, args.seeds))]
    words += ["--configs", args.configs] if args.configs else []
    words += ["--datasets", args.datasets] if args.datasets else []
    words += ["--epochs", str(args.epochs)] if args.epochs is not None else []
    words += ["--machine-named"] if args.machine_named else []
    return shlex.join(words)


def command_bench_quality(args: argparse.Namespace) -> int:
    from benchmarks import quality

    if not args.seeds:
        raise ConfigError("--seeds must name at least one seed")
    if args.evaluate_again and args.epochs is not None:
        raise ConfigError("--evaluate-again trains nothing: it takes no --epochs")
    extra = [] if args.epochs is None else ["--epochs", str(args.epochs)]
    names = args.configs.split(",") if args.configs else None
    datasets = args.datasets.split(",") if args.datasets else None
    runs_dir = args.runs_dir or default_runs_dir()
    command = bench_quality_command(args)
    raw = args.json_out or Path(f"docs/bench/quality-{args.suite}.json")
    if args.evaluate_again:
        results = quality.evaluate_again(args.suite, quality.load_raw(raw), runs_dir, main, names, datasets, command)
    else:
        results = quality.run_suite(args.suite, args.seeds, runs_dir, main, extra, names, datasets, command)
    print(quality.save(args.suite, results, raw, args.out, args.machine_named))
    return 0


def command_bench_scale(args: argparse.Namespace) -> int:
    from benchmarks.scale import bench_scale

    for name in ("images", "workers", "ranks", "rank_epochs", "rank_images", "growth_samples", "growth_batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.growth is not None and (not args.growth or min(args.growth) < 1):
        raise ConfigError(f"--growth expects numbers of images of at least 1, got {args.growth}")
    if args.image_size < 8:
        raise ConfigError(f"--image-size must be at least 8, got {args.image_size}")
    bench_scale(
        args.images,
        args.image_size,
        args.workers,
        args.folder,
        args.epochs,
        args.json_out,
        args.ranks,
        args.rank_epochs,
        args.rank_images,
        args.growth,
        args.growth_samples,
        args.growth_batch_size,
        args.growth_streamed_only,
    )
    return 0


def command_bench_kmeans(args: argparse.Namespace) -> int:
    from benchmarks.speed import bench_kmeans

    for name in ("n", "dim", "k", "iters"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.k > args.n:
        raise ConfigError(f"--k {args.k} is larger than --n {args.n}")
    if not 0 <= args.neighbours < args.n:
        raise ConfigError(f"--neighbours must be between 0 and --n - 1 ({args.n - 1}), got {args.neighbours}")
    inits = {"both": ("random", "k-means++"), "none": ()}.get(args.sklearn_init, (args.sklearn_init,))
    device = runtime.resolve_device(args.device)
    faiss, json_path = not args.no_faiss, args.json_out
    bench_kmeans(args.n, args.dim, args.k, args.iters, device, args.seed, inits, faiss, json_path, args.neighbours)
    return 0


def command_runs(args: argparse.Namespace) -> int:
    runs_dir = args.runs_dir or default_runs_dir()
    rows: list[dict[str, Any]] = []
    for layout in list_runs(runs_dir):
        try:
            record = artifacts.read_run_record(layout)
            metrics = metric_rows(layout)
            last = metrics[-1] if metrics else {}
            row = {
                "run_id": layout.run_id,
                "dataset": record["config"]["dataset"],
                "k": record["config"]["num_clusters"],
                "epochs": f"{len(metrics)}/{record['config']['epochs']}",
                "nmi": last.get("nmi"),
                "nmi_previous": last.get("nmi_previous"),
                "created": record["created"],
            }
        except (RunError, KeyError, TypeError, ValueError):
            row = {"run_id": layout.run_id, "dataset": f"damaged: see `deepcluster verify {layout.run_id}`"}
        rows.append(row)
    if not rows:
        print(f"no runs in {runs_dir}")
        return 0
    print(format_table(rows, ("run_id", "dataset", "k", "epochs", "nmi", "nmi_previous", "created")))
    return 0


def command_inspect(args: argparse.Namespace) -> int:
    layout = find_run(args.run_id, args.runs_dir)
    artifacts.check_run(layout)
    if args.epoch is None:
        rows = metric_rows(layout)
        print(json.dumps(rows, indent=2) if args.json else format_table(rows))
        return 0
    metrics = epoch_metrics(layout, args.epoch)
    clusters = artifacts.read_clusters(layout.assignments(args.epoch))
    sizes = np.bincount(clusters, minlength=metrics["num_clusters"]).tolist()
    if args.json:
        print(json.dumps({**metrics, "cluster_size_list": sizes}, indent=2))
        return 0
    print(format_table([flat_metrics(metrics)]))
    print(f"\ncluster sizes (largest first): {sorted(sizes, reverse=True)}")
    print("stage seconds: " + ", ".join(f"{name} {value:.2f}" for name, value in metrics["stage_seconds"].items()))
    return 0


def command_verify(args: argparse.Namespace) -> int:
    layout = find_run(args.run_id, args.runs_dir)
    checked = artifacts.verify_run(layout)
    problems = [problem for part in checked.values() for problem in part]
    if problems:
        print(f"run {layout.run_id}: {len(problems)} problem(s):")
        print("\n".join(f"  {problem}" for problem in problems))
        return 1
    epochs = len(layout.completed_epochs())
    print(f"run {layout.run_id}: data and {epochs} epochs verified, all files match their manifests")
    return 0


def command_evaluate(args: argparse.Namespace) -> int:
    print_evaluation(find_run(args.run_id, args.runs_dir), args.epoch, args.device, args.json)
    return 0


def print_evaluation(layout: RunLayout, epoch: int | None, device: str, as_json: bool) -> None:
    """Evaluate `epoch` (default: the last) of a run and print the table, or the epoch's result as JSON."""
    from deepcluster.evaluate import evaluate_run, format_evaluation

    epoch, evaluation = evaluate_run(layout, epoch, device)
    if as_json:
        print(json.dumps({"baselines": evaluation["baselines"], **evaluation["epochs"][str(epoch)]}, indent=2))
    else:
        print(f"\n{format_evaluation(evaluation, epoch)}\n\nwritten to {layout.evaluation}")


def command_report(args: argparse.Namespace) -> int:
    from deepcluster.html_report import write_report

    index = write_report(find_run(args.run_id, args.runs_dir), args.out, args.epoch)
    print(f"report written to {index}")
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from deepcluster.html_report import differing_config, write_comparison

    if len(args.run_ids) < 2:
        raise RunError(f"compare needs at least two runs, got {len(args.run_ids)}")
    if len(set(args.run_ids)) != len(args.run_ids):
        raise RunError(f"compare got the same run twice: {' '.join(args.run_ids)}")
    layouts = [find_run(run_id, args.runs_dir) for run_id in args.run_ids]
    for layout in layouts:
        artifacts.check_run(layout)
    differing = differing_config(layouts)
    runs = {layout.run_id: metric_rows(layout) for layout in layouts}
    print("config keys that differ:")
    print(format_table(differing, ("key", *args.run_ids)) if differing else "  none")
    last = [{"run": run, **(rows or [{}])[-1]} for run, rows in runs.items()]
    print("\nlast finished epoch:")
    print(format_table(last, ("run", "epoch", "train_loss", "nmi_previous", "nmi", "acc", "max_size", "seconds")))
    print(f"\ncurves overlaid: {write_comparison(runs, differing, args.out)}")
    return 0


def command_predict(args: argparse.Namespace) -> int:
    from deepcluster.metrics import nmi
    from deepcluster.predict import images_to_predict, predict, write_predictions

    layout = find_run(args.run_id, args.runs_dir)
    epoch = resolve_epoch(layout, args.epoch)
    out = args.out or Path(f"{layout.run_id}-epoch{epoch:04d}-predictions.parquet")
    check_output_file(out, args.overwrite)
    values = {"dataset": args.images, "data_dir": args.data_dir, "split": args.split}
    values |= {"classes": args.classes, "limit": args.limit}
    config = build_config({key: value for key, value in values.items() if value is not None})
    images = images_to_predict(layout, config)
    prediction = predict(layout, images.inputs, epoch, args.device, args.progress)
    write_predictions(out, images, prediction)
    sizes = np.bincount(prediction.clusters, minlength=prediction.num_clusters)
    print(
        f"{len(images.inputs)} images of {images.source} assigned to the clusters of run {layout.run_id}, epoch {epoch}"
    )
    print(f"cluster sizes (largest first): {sorted(sizes.tolist(), reverse=True)}")
    print(
        f"distance to the centroid: median {np.median(prediction.distances):.4f}, max {prediction.distances.max():.4f}"
    )
    if images.labels is not None:
        print(f"NMI against the images' labels: {nmi(images.labels, prediction.clusters):.4f}")
    print(f"written to {out}")
    return 0


def check_output_file(out: Path, overwrite: bool) -> None:
    """Refuse an output path that is a directory, lies in a missing directory or in a run's committed files
    (a directory sealed by a manifest), or exists while `overwrite` is off."""
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: directory {out.parent} does not exist")
    if (out.parent / artifacts.MANIFEST).exists():
        raise RunError(f"--out {out}: that directory holds a run's committed files, which are never written to")
    if out.is_dir():
        raise RunError(f"--out {out}: is a directory; give a file name")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise RunError(f"--out {out}: exists; pass --overwrite to replace it")


def command_group(args: argparse.Namespace) -> int:
    from deepcluster.grouping import group_epoch, labels_by_group
    from deepcluster.metrics import nmi

    layout = find_run(args.run_id, args.runs_dir)
    epoch, groups = group_epoch(layout, args.epoch, args.groups, args.method, args.device)
    print(f"{len(groups)} images of run {layout.run_id} (epoch {epoch}) in {args.groups} groups by {args.method}")
    print(f"group sizes (largest first): {sorted(np.bincount(groups, minlength=args.groups).tolist(), reverse=True)}")
    if layout.labels.is_file():
        labels = artifacts.load_array(layout.labels)
        print(f"NMI against the labels: {nmi(labels, groups):.4f}")
        print("the labels in each group:", *labels_by_group(groups, labels), sep="\n  ")
    print(f"written to {layout.groups(epoch, args.groups, args.method)}")
    return 0


COMMANDS = {
    "run": command_run,
    "resume": command_resume,
    "join": command_join,
    "runs": command_runs,
    "inspect": command_inspect,
    "verify": command_verify,
    "evaluate": command_evaluate,
    "report": command_report,
    "compare": command_compare,
    "predict": command_predict,
    "group": command_group,
    "bench": command_bench,
    "bench-quality": command_bench_quality,
    "bench-kmeans": command_bench_kmeans,
    "bench-scale": command_bench_scale,
}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("deepcluster").setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    quiet_failures(not args.verbose)
    try:
        with stop_cleanly():
            return COMMANDS[args.command](args)
    except USER_ERRORS as error:
        print(f"deepcluster: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the storage refused: full, read-only, not permitted, ...
        if args.verbose:
            raise
        where = f" {error.filename}" if error.filename else ""
        print(f"deepcluster: error: cannot use{where}: {error.strerror or error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
