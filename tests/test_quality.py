"""The quality benchmark: what it asks of `deepcluster`, how it reports, and its machinery on tiny data."""

import json
from pathlib import Path

import pytest

from benchmarks import quality
from deepcluster import runtime
from deepcluster.artifacts import validate_run_id
from deepcluster.cli import bench_quality_command, build_parser, main
from deepcluster.errors import RunError


@pytest.fixture
def no_kernel_limits(monkeypatch):
    """The environment of a machine with none of the kernel limits set, which the results name before a command."""
    for name in runtime.KERNEL_LIMITS:
        monkeypatch.delenv(name, raising=False)


def test_the_results_name_the_command_as_a_shell_takes_it(no_kernel_limits, monkeypatch):
    args = build_parser().parse_args(
        ["bench-quality", "--suite", "dev", "--evaluate-again", "--configs", "default (AMD EPYC (AVX2))"]
    )
    expected = "deepcluster bench-quality --suite dev --evaluate-again --configs 'default (AMD EPYC (AVX2))'"
    assert bench_quality_command(args) == expected
    args = build_parser().parse_args(["bench-quality", "--suite", "check", "--seeds", "0,1", "--epochs", "2"])
    assert bench_quality_command(args) == "deepcluster bench-quality --suite check --seeds 0,1 --epochs 2"
    args = build_parser().parse_args(["bench-quality", "--seeds", "3", "--machine-named"])
    assert bench_quality_command(args) == "deepcluster bench-quality --suite dev --seeds 3 --machine-named"
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # the kernels' limits make part of the command
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    expected = "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 deepcluster bench-quality --suite dev --seeds 3"
    assert bench_quality_command(build_parser().parse_args(["bench-quality", "--seeds", "3"])) == expected


def test_suite_machinery_on_tiny_data(prefect_harness, no_kernel_limits, tmp_path: Path, monkeypatch, capsys):
    tiny = ["--k", "4", "--epochs", "1", "--min-epoch-samples", "0", "--batch-size", "32"]
    toy = quality.Suite(
        datasets={"sample-120": ["--limit", "120"], "digits-100": ["--dataset", "digits", "--limit", "100"]},
        configurations={"default": tiny, "one-view": [*tiny, "--views", "1"]},
    )
    monkeypatch.setitem(quality.SUITES, "toy", toy)
    out, raw = tmp_path / "RESULTS.md", tmp_path / "raw.json"
    args = ["--runs-dir", str(tmp_path / "runs"), "bench-quality", "--suite", "toy", "--out", str(out)]
    args += ["--json-out", str(raw), "--configs", "default"]
    assert main([*args, "--seeds", "0,1"]) == 0
    run = json.loads((tmp_path / "runs" / "quality-toy-digits-100-default-seed1" / "run.json").read_text())
    assert (run["config"]["dataset"], run["config"]["limit"], run["config"]["seed"]) == ("digits", 100, 1)
    results = json.loads(raw.read_text())
    assert list(results) == ["sample-120", "digits-100"] and len(results["digits-100"]["default"]["runs"]) == 2
    evaluation = results["sample-120"]["default"]["runs"][0]["evaluation"]
    assert evaluation["grouping"] == quality.DEFAULT_GROUPING and set(evaluation["groupings"]) == {"clustered", "conv"}
    text = out.read_text()
    for line in ("### Default configuration against the goals", "### sample-120", "### digits-100"):
        assert line in text
    assert "| sample-120 | " in text and "baseline: sobel_pixels" in text
    # a second benchmark adds a configuration on one dataset; the earlier results stay, finished runs are reused
    assert main([*args[:-1], "one-view", "--datasets", "digits-100", "--seeds", "0"]) == 0
    merged = json.loads(raw.read_text())
    assert set(merged["digits-100"]) == {"default", "one-view"} and set(merged["sample-120"]) == {"default"}
    assert merged["sample-120"] == results["sample-120"]
    assert "| one-view |  | " in out.read_text()  # not run on sample-120: an empty cell there
    # evaluated again, nothing trained: the same scores (evaluation is deterministic), the command named
    assert main([*args[:-2], "--evaluate-again", "--datasets", "digits-100", "--configs", "default"]) == 0
    again = json.loads(raw.read_text())
    assert again["digits-100"]["default"]["runs"] == merged["digits-100"]["default"]["runs"]
    assert (
        "`deepcluster bench-quality --suite toy --evaluate-again --configs default --datasets digits-100` ("
        in (again["digits-100"]["default"]["produced_by"])
    )
    assert (
        again["sample-120"] == results["sample-120"]
        and again["digits-100"]["one-view"] == merged["digits-100"]["one-view"]
    )
    capsys.readouterr()


def test_quality_suite_trains_evaluates_and_writes_results(tmp_path: Path, monkeypatch):
    calls: list[list[str]] = []

    def fake_cli(args: list[str]) -> int:  # stands in for `deepcluster`: what the suite asks of it
        calls.append(args)
        if "run" in args:
            root = Path(args[1]) / args[args.index("--run-id") + 1]
            (root / "epochs" / "0000").mkdir(parents=True)
            (root / "epochs" / "0000" / "metrics.json").write_text(json.dumps(METRICS))
        else:
            run_id = args[args.index("evaluate") + 1]
            seed = int(run_id.rsplit("seed", 1)[1])
            shift = 0.2 if "-two-" in run_id else 0.0
            (Path(args[1]) / run_id / "evaluation.json").write_text(json.dumps(evaluation(0.5 + seed / 10 + shift)))
        return 0

    toy = quality.Suite(
        datasets={"one": ["--limit", "9"], "two": []}, configurations={"default": [], "k3": ["--k", "3"]}
    )
    monkeypatch.setitem(quality.SUITES, "toy", toy)
    with pytest.raises(RunError, match=r"suite 'toy' has no configuration nope \(it has default, k3\)"):
        quality.run_suite("toy", [0], tmp_path, fake_cli, [], ["nope"])
    with pytest.raises(RunError, match=r"suite 'toy' has no dataset mnist \(it has one, two\)"):
        quality.run_suite("toy", [0], tmp_path, fake_cli, [], None, ["mnist"])
    with pytest.raises(RunError, match="unknown suite 'imagenet'"):
        quality.run_suite("imagenet", [0], tmp_path, fake_cli, [])
    assert not calls
    results = quality.run_suite("toy", [0, 2], tmp_path, fake_cli, ["--epochs", "1"], None, None, "bench --suite toy")
    assert calls[0] == [
        *("--runs-dir", str(tmp_path), "run", "--limit", "9", "--epochs", "1"),
        *("--seed", "0", "--run-id", "quality-toy-one-default-seed0", "--no-progress"),
    ]
    assert calls[1] == ["--runs-dir", str(tmp_path), "evaluate", "quality-toy-one-default-seed0", "--epoch", "0"]
    assert calls[4][:7] == ["--runs-dir", str(tmp_path), "run", "--limit", "9", "--k", "3"]
    assert len(calls) == 2 * 2 * 2 * 2  # datasets x configurations x seeds x (run, evaluate)
    section = quality.suite_markdown("toy", results)
    assert "Produced by:\n\n- `bench --suite toy` (" in section
    # dataset one: NMI 0.5 and 0.7 over seeds 0 and 2 (worst 0.5); the baseline 0.3 by k-means on pixels
    assert "| default | 0.600 ± 0.141 | 0.600 ± 0.141 |" in section and "| 0.500 | 0, 2 |" in section
    assert "| one | 0.600 ± 0.141 | 0.500 | 0.300 / 0.200 | 0.400: met |" in section
    assert "| default | 0.600 (0.500) | 0.800 (0.700) | 0.700 |" in section  # every configuration by dataset
    assert "`deepcluster run --limit 9 --k 3 --epochs 1 --seed SEED`" in section
    path = tmp_path / "RESULTS.md"
    quality.write_results(path, "toy", section)
    quality.write_results(path, "other", "other section\n")
    quality.write_results(path, "toy", section.replace("default", "renamed"))
    text = path.read_text()
    assert "renamed" in text and "| default |" not in text and "other section" in text


def test_a_configuration_can_name_each_datasets_number_of_groups(tmp_path: Path, monkeypatch):
    trained: dict[str, list[str]] = {}
    monkeypatch.setattr(quality, "_run_seed", lambda cli, runs, run_id, flags, seed: trained.setdefault(run_id, flags))
    toy = quality.Suite(
        datasets={"three": ["--classes", "0,1,2"], "ten": []},
        configurations={"default": [], "extra": ["--extra-k", quality.GROUPS]},
        groups={"ten": 10},  # three's: the classes its --classes flag names
    )
    monkeypatch.setitem(quality.SUITES, "toy", toy)
    results = quality.run_suite("toy", [0], tmp_path, main, ["--epochs", "1"])
    assert trained == {
        "quality-toy-three-default-seed0": ["--classes", "0,1,2", "--epochs", "1"],
        "quality-toy-three-extra-seed0": ["--classes", "0,1,2", "--extra-k", "3", "--epochs", "1"],
        "quality-toy-ten-default-seed0": ["--epochs", "1"],
        "quality-toy-ten-extra-seed0": ["--extra-k", "10", "--epochs", "1"],
    }
    assert results["ten"]["extra"]["command"] == ["deepcluster", "run", "--extra-k", "10", "--epochs", "1"]
    trained.clear()
    monkeypatch.setitem(quality.SUITES, "toy", quality.Suite(toy.datasets, toy.configurations))
    with pytest.raises(RunError, match="names the number of groups, but the suite gives none for 'ten'"):
        quality.run_suite("toy", [0], tmp_path, main, [], ["extra"])
    assert not trained  # refused before the first run


def test_every_suite_gives_each_dataset_one_number_of_groups():
    for name, suite in quality.SUITES.items():
        for dataset, flags in suite.datasets.items():
            assert suite.groups_of(dataset), (name, dataset)
            assert ("--classes" in flags) != (dataset in suite.groups), (name, dataset)  # said once, not twice
    assert quality.SUITES["dev"].groups_of("fmnist-0-2-4-6-8") == 5


def test_recorded_runs_are_evaluated_again_without_training(tmp_path: Path):
    calls: list[list[str]] = []

    def fake_cli(args: list[str]) -> int:  # `deepcluster evaluate`, its grouping changed since: NMI 0.9 now
        calls.append(args)
        (Path(args[1]) / args[3] / "evaluation.json").write_text(json.dumps(evaluation(0.9, epoch=4)))
        return 0

    def record(run_ids: list[str]) -> dict:
        old = evaluation(0.5, epoch=4)
        runs = [{"seed": 0, "run_id": run_id, "evaluation": old["epochs"]["4"], "seconds": 60.0} for run_id in run_ids]
        return {"command": ["deepcluster", "run"], "produced_by": "`bench --suite toy` (then)", "runs": runs}

    raw = {"one": {"default": record(["a-seed0"]), "k3": record(["b-seed0"])}, "two": {"default": record(["c-seed0"])}}
    for run_id in ("a-seed0", "c-seed0"):
        (tmp_path / run_id).mkdir()
    with pytest.raises(RunError, match="the results of suite 'toy' hold no configuration k5"):
        quality.evaluate_again("toy", raw, tmp_path, fake_cli, ["k5"])
    with pytest.raises(RunError, match=f"1 of the 3 runs to evaluate again are not in {tmp_path}: b-seed0"):
        quality.evaluate_again("toy", raw, tmp_path, fake_cli)
    assert not calls  # checked before any run is evaluated
    again = quality.evaluate_again("toy", raw, tmp_path, fake_cli, ["default"], None, "bench --evaluate-again")
    assert calls == [
        ["--runs-dir", str(tmp_path), "evaluate", run_id, "--epoch", "4"] for run_id in ("a-seed0", "c-seed0")
    ]
    assert set(again) == {"one", "two"} and set(again["one"]) == {"default"}
    run = again["one"]["default"]["runs"][0]
    assert run["evaluation"]["groupings"]["conv"]["kmeans"]["nmi"] == 0.9 and run["seconds"] == 60.0
    assert run["baselines"] == evaluation(0.9)["baselines"]
    assert again["one"]["default"]["produced_by"].startswith("`bench --suite toy` (then); `bench --evaluate-again` (")
    twice = quality.evaluate_again("toy", again, tmp_path, fake_cli, ["default"], ["two"], "bench --evaluate-again")
    assert twice["two"]["default"]["produced_by"].count("--evaluate-again") == 1  # the latest evaluation named


def test_new_results_replace_their_own_seeds_of_their_dataset_and_configuration():
    def result(command: str, *seeds: int, by: str = "bench") -> dict[str, object]:
        return {"command": [command], "produced_by": by, "runs": [{"seed": seed, "nmi": command} for seed in seeds]}

    earlier = {"one": {"default": result("a", 0), "k3": result("k", 0, 1)}, "two": {"default": result("a", 0)}}
    new = {"one": {"k3": result("k", 1, 2, by="again")}, "three": {"default": result("a", 0)}}
    merged = quality.merge(earlier, {**new, "two": {"default": result("changed", 1, by="changed")}})
    assert merged == {
        "one": {"default": result("a", 0), "k3": result("k", 0, 1, 2, by="bench; again")},  # seed 0 kept
        "two": {"default": result("changed", 1, by="changed")},  # another command: the seeds before are not its own
        "three": {"default": result("a", 0)},
    }
    assert earlier["one"]["k3"] == result("k", 0, 1)  # the earlier results are not changed


def test_a_result_from_another_machine_is_kept_beside_the_new_one_never_averaged_with_it():
    def result(machine: str, *seeds: int, by: str = "bench", command: str = "a") -> dict[str, object]:
        runs = [{"seed": seed, "machine": f"{machine}, 2 cores, no GPU; torch 2"} for seed in seeds]
        return {"command": [command], "produced_by": by, "runs": runs}

    earlier = {"one": {"default": result("CPU A (AVX512)", 0, 1, 2), "k3": result("CPU A (AVX512)", 0)}}
    new = {"one": {"default": result("CPU A (AVX2)", 0, by="again"), "k3": result("CPU B (AVX2)", 0, command="b")}}
    merged = quality.merge(earlier, new)
    assert merged["one"] == {
        "default": result("CPU A (AVX2)", 0, by="again"),  # seeds 1 and 2 of the other machine not kept beside it
        "k3": result("CPU B (AVX2)", 0, command="b"),  # another command: replaced, whatever the machine
        "default (CPU A (AVX512))": result("CPU A (AVX512)", 0, 1, 2),
    }
    again = quality.merge(merged, {"one": {"default": result("CPU A (AVX512)", 2, 3, by="third")}})
    assert list(again["one"]) == ["default", "k3", "default (CPU A (AVX2))"]  # the new one joins its machine's
    assert again["one"]["default"] == result("CPU A (AVX512)", 0, 1, 2, 3, by="bench; third")
    assert again["one"]["default (CPU A (AVX2))"] == result("CPU A (AVX2)", 0, by="again")
    other = quality.merge(again, {"one": {"default": result("CPU A (AVX2)", 1, command="b")}})
    assert other["one"]["default (CPU A (AVX2))"] == again["one"]["default (CPU A (AVX2))"]  # not its command
    unnamed = {"one": {"default": {"command": ["a"], "produced_by": "old", "runs": [{"seed": 0}]}}}
    assert "default (an unnamed machine)" in quality.merge(unnamed, new)["one"]


def test_machine_named_results_go_beside_another_machines_and_leave_it_its_name():
    def result(machine: str, *seeds: int, by: str = "bench", command: str = "a") -> dict[str, object]:
        runs = [{"seed": seed, "machine": f"{machine}, 2 cores, no GPU; torch 2"} for seed in seeds]
        return {"command": [command], "produced_by": by, "runs": runs}

    earlier = {"one": {"default": result("CPU A (AVX2)", 0, 1), "k3": result("CPU A (AVX2)", 0)}}
    new = {"one": {"default": result("CPU A (AVX512)", 0, by="new"), "k3": result("CPU A (AVX2)", 1, by="more")}}
    merged = quality.merge(earlier, new, machine_named=True)
    assert merged["one"] == {
        "default": result("CPU A (AVX2)", 0, 1),  # the other machine's keeps its name, unchanged
        "k3": result("CPU A (AVX2)", 0, 1, by="bench; more"),  # the same machine: seeds joined as without the flag
        "default (CPU A (AVX512))": result("CPU A (AVX512)", 0, by="new"),
    }
    again = quality.merge(merged, {"one": {"default": result("CPU A (AVX512)", 1, by="later")}}, machine_named=True)
    assert list(again["one"]) == list(merged["one"])  # joined in place
    assert again["one"]["default (CPU A (AVX512))"] == result("CPU A (AVX512)", 0, 1, by="new; later")
    assert again["one"]["default"] == earlier["one"]["default"]
    first = quality.merge({}, {"two": {"default": result("CPU A (AVX512)", 0)}}, machine_named=True)
    assert first == {"two": {"default": result("CPU A (AVX512)", 0)}}  # nothing to keep a name from


def test_goal_is_not_met_when_the_worst_seed_is_at_the_baseline():
    run = {"seed": 0, "evaluation": evaluation(0.9)["epochs"]["0"], "baselines": evaluation(0.9)["baselines"]}
    worst = {**run, "seed": 1, "evaluation": evaluation(0.25)["epochs"]["0"]}
    results = {"one": {"default": {"command": ["deepcluster", "run"], "produced_by": "", "runs": [run, run, worst]}}}
    assert "| one | 0.683 ± 0.375 | 0.250 | 0.300 / 0.200 | 0.400: not met |" in "\n".join(quality._summary(results))


METRICS = {
    "epoch": 0,
    "train_loss": 1.0,
    "kmeans_loss": 1.0,
    "nmi_previous": None,
    "num_clusters": 3,
    "cluster_sizes": {"min": 1, "max": 2, "empty": 0, "largest_over_fair_share": 1.5},
    "stage_seconds": {"epoch": 60.0},
}


def evaluation(nmi: float, epoch: int = 0) -> dict:
    def scores(value: float) -> dict:
        return {"nmi": value, "acc": value, "ari": value, "largest_over_fair_share": 1.0}

    base = {"kmeans": scores(0.3), "spectral": scores(0.35)}
    sobel = {"kmeans": scores(0.2), "spectral": scores(0.25)}
    return {
        "baselines": {
            "pixels": {"groupings": base, "knn_accuracy": 0.8},
            "sobel_pixels": {"groupings": sobel, "knn_accuracy": 0.7},
        },
        "epochs": {
            str(epoch): {
                "epoch": epoch,
                "grouping": "kmeans",
                "groupings": {
                    "conv": {"kmeans": scores(nmi), "spectral": scores(nmi - 0.05)},
                    "clustered": {"kmeans": scores(nmi), "spectral": scores(nmi)},
                },
                "knn_accuracy": 0.9,
                "linear_probe_accuracy": 0.9,
                "run_nmi_previous": 0.8,
                "run_largest_over_fair_share": 1.5,
            }
        },
    }


def test_a_configuration_run_with_fewer_seeds_is_compared_with_the_default_on_the_same_seeds():
    def run(seed: int, nmi: float) -> dict:
        return {"seed": seed, "evaluation": evaluation(nmi)["epochs"]["0"], "baselines": evaluation(nmi)["baselines"]}

    default = {"runs": [run(0, 0.5), run(1, 0.9), run(2, 0.7)]}
    results = {"one": {"default": default, "other": {"runs": [run(0, 0.6)]}}, "two": {"default": default}}
    table = "\n".join(quality._by_dataset(results))
    assert "| default | 0.700 (0.500) | 0.700 (0.500) | 0.700 |" in table
    assert "| default, seed 0 | 0.500 (0.500) | 0.500 (0.500) | 0.500 |" in table
    assert "| other | 0.600 (0.600) |  |  |" in table


def test_every_run_of_every_suite_has_a_valid_run_id():
    for suite, chosen in quality.SUITES.items():
        for dataset in chosen.datasets:
            for name in chosen.configurations:
                validate_run_id(f"quality-{suite}-{dataset}-{name}-seed0")


def test_the_summary_scores_the_baselines_by_the_default_s_final_grouping_and_older_records_show_a_dash():
    def run(seed: int, nmi: float, snn: bool) -> dict:
        record = evaluation(nmi)
        epoch, baselines = record["epochs"]["0"], record["baselines"]
        if snn:
            epoch["grouping"], epoch["groupings"]["conv"]["snn"] = "snn", dict.fromkeys(("nmi", "acc", "ari"), nmi)
            baselines["pixels"]["groupings"]["snn"] = {"nmi": 0.45}
            baselines["sobel_pixels"]["groupings"]["snn"] = {"nmi": 0.4}
        return {"seed": seed, "evaluation": epoch, "baselines": baselines, "seconds": 60.0}

    results = {
        "one": {
            "default": {"runs": [run(0, 0.6, True), run(1, 0.8, True)]},
            "older": {"runs": [run(0, 0.5, False)]},
        }
    }
    summary = "\n".join(quality._summary(results))
    assert "| 0.700 / 0.450 / 0.400 (snn) | 0.700 / 0.300 / 0.200 |" in summary
    header, _, default_row, older_row, *_ = (line.split(" | ") for line in quality._dataset_table(results["one"]))
    column = header.index("NMI snn")
    assert default_row[column] == "0.700 ± 0.141" and older_row[column] == "-"  # none before snn existed


def test_runs_are_scored_by_the_final_grouping_their_command_gives_today():
    def run(seed: int, regrouped: bool, grouping: str = quality.DEFAULT_GROUPING, nmi: float = 0.9) -> dict:
        record = evaluation(0.6)
        epoch, baselines = record["epochs"]["0"], record["baselines"]
        epoch["grouping"] = "spectral"  # the default when the run was evaluated
        if regrouped:  # evaluated when `grouping` existed too
            epoch["groupings"]["conv"][grouping] = {"nmi": nmi, "acc": 0.95, "ari": 0.9}
            baselines["pixels"]["groupings"][grouping] = {"nmi": 0.45}
            baselines["sobel_pixels"]["groupings"][grouping] = {"nmi": 0.4}
        return {"seed": seed, "evaluation": epoch, "baselines": baselines, "seconds": 60.0}

    def result(command: list[str], *runs: dict) -> dict:
        return {"command": command, "produced_by": "`deepcluster bench-quality`", "runs": list(runs)}

    default = result(["deepcluster", "run"], run(0, True), run(1, True))
    results = {
        "one": {
            "default": default,
            "named": result(["deepcluster", "run", "--grouping", "kmeans"], run(0, True)),
            "older": result(["deepcluster", "run"], run(0, False)),
            "partly": result(["deepcluster", "run", "--k", "10"], run(0, True), run(1, False)),
            "earlier": result(
                ["deepcluster", "run", "--k", "20"], run(0, True, quality.EARLIER_DEFAULT_GROUPINGS[0], 0.8)
            ),
        },
        "two": {"default": default},
    }
    section = quality.suite_markdown("s", results)
    # the default grouping now, the baselines' too
    assert f"| 0.900 / 0.450 / 0.400 ({quality.DEFAULT_GROUPING}) |" in section
    assert "| default | 0.900 ± 0.000 | 0.950 ± 0.000 |" in section
    assert "| named | 0.600 | 0.600 |" in section  # its own `--grouping`
    assert "| older | 0.550 | 0.550 |" in section  # evaluated before the default grouping existed: its own
    assert "| partly | 0.550 ± 0.000 | 0.550 ± 0.000 |" in section  # seeds are never scored by two groupings
    assert "| earlier | 0.800 | 0.950 |" in section  # scored again when an earlier default was the default
    assert results["one"]["default"]["runs"][0]["evaluation"]["grouping"] == "spectral"  # the records are kept


def test_each_benchmark_command_is_named_once():
    results = {
        "one": {"default": {"produced_by": "`a` (day 1); `b` (day 2), when x"}, "k3": {"produced_by": "`b` (day 2)"}},
        "two": {"default": {"produced_by": "`b` (day 2), when x"}},
    }
    assert quality._producers(results) == ["`a` (day 1)", "`b` (day 2), when x", "`b` (day 2)"]


def test_two_benchmarks_of_one_suite_that_end_together_both_keep_their_results(tmp_path: Path, monkeypatch):
    def result(nmi: float) -> dict:
        run = {"seed": 0, "evaluation": evaluation(nmi)["epochs"]["0"], "baselines": evaluation(nmi)["baselines"]}
        return {"command": ["deepcluster", "run"], "produced_by": "`bench`", "runs": [{**run, "seconds": 60.0}]}

    out, raw = tmp_path / "RESULTS.md", tmp_path / "raw.json"

    def run_suite(*args: object) -> dict:  # while this benchmark trains, another of the same suite saves its own
        quality.save("toy", {"two": {"default": result(0.7)}}, raw, out)
        return {"one": {"default": result(0.6)}}

    monkeypatch.setattr(quality, "run_suite", run_suite)
    args = ["bench-quality", "--suite", "toy", "--seeds", "0", "--out", str(out), "--json-out", str(raw)]
    assert main(args) == 0
    assert set(json.loads(raw.read_text())) == {"one", "two"}
    assert "### one" in out.read_text() and "### two" in out.read_text()
    assert not list(tmp_path.glob(".*.lock"))  # each lock's file removed when it is released
