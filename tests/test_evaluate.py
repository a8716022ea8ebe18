"""`deepcluster evaluate` and the quality benchmark on a finished tiny run."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from deepcluster import quality
from deepcluster.artifacts import RunError, RunLayout
from deepcluster.cli import main
from deepcluster.config import Config
from deepcluster.data import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC
from deepcluster.evaluate import evaluate_run, grouping_scores, knn_accuracy, linear_probe_accuracy
from tests.test_data import write_idx


def test_scores_on_separable_points():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 50)
    points = np.eye(3)[labels] * 10 + rng.normal(size=(150, 3))
    scores = grouping_scores(points, labels)
    assert scores["nmi"] == pytest.approx(1.0) and scores["acc"] == 1.0 and scores["largest_over_fair_share"] == 1.0
    train, test = np.arange(150) % 2 == 0, np.arange(150) % 2 == 1
    assert knn_accuracy(points[train], labels[train], points[test], labels[test]) == 1.0
    assert linear_probe_accuracy(points[train], labels[train], points[test], labels[test]) == 1.0
    shuffled = rng.permutation(labels)  # labels unrelated to the points: chance level
    assert grouping_scores(points, shuffled)["nmi"] < 0.1
    assert grouping_scores(points, labels, "spectral")["nmi"] == pytest.approx(1.0)


def test_evaluate_writes_every_score_and_is_repeatable(finished_run: Path, tmp_path: Path, capsys):
    shutil.copytree(finished_run / "tiny", tmp_path / "tiny")
    assert main(["--runs-dir", str(tmp_path), "evaluate", "tiny"]) == 0
    table = capsys.readouterr().out
    assert "baseline: pixels" in table and "baseline: sobel_pixels" in table
    assert re.search(r"epoch 1, clustered \(128-d\) +spectral", table)
    assert re.search(r"epoch 1, conv \(1152-d\) +kmeans", table)
    evaluation = json.loads((tmp_path / "tiny" / "evaluation.json").read_text())
    result = evaluation["epochs"]["1"]
    assert evaluation["num_classes"] == 3 and set(evaluation["baselines"]) == {"pixels", "sobel_pixels"}
    assert result["grouping"] == Config().grouping  # the run's config
    for features in ("clustered", "conv"):
        for scores in result["groupings"][features].values():
            assert 0 <= scores["nmi"] <= 1 and 0 <= scores["acc"] <= 1
    assert 0 <= result["knn_accuracy"] <= 1
    assert result["probe_split"].startswith("holdout: 60 of the run's 300 images")
    # both groupings find real structure in the pixels of these 3 classes (NMI 0.42 and 0.83 on the full sample)
    assert evaluation["baselines"]["pixels"]["groupings"]["kmeans"]["nmi"] > 0.2
    assert evaluation["baselines"]["pixels"]["groupings"]["spectral"]["nmi"] > 0.2
    assert 0.5 < evaluation["baselines"]["sobel_pixels"]["knn_accuracy"] <= 1  # 3 classes: chance is 1/3
    # baselines recorded before there were several groupings are computed again, to the same figures
    older = {**evaluation, "baselines": {name: {**scores} for name, scores in evaluation["baselines"].items()}}
    for scores in older["baselines"].values():
        scores.update(scores.pop("groupings")["kmeans"])
    (tmp_path / "tiny" / "evaluation.json").write_text(json.dumps(older))
    assert main(["--runs-dir", str(tmp_path), "evaluate", "tiny", "--epoch", "0", "--json"]) == 0
    again = json.loads((tmp_path / "tiny" / "evaluation.json").read_text())
    assert again["baselines"] == evaluation["baselines"]
    assert set(again["epochs"]) == {"0", "1"} and again["epochs"]["1"] == result  # kept, and deterministic
    assert json.loads(capsys.readouterr().out)["epoch"] == 0


def test_evaluate_refuses_unfinished_epochs_and_unlabelled_runs(finished_run: Path, tmp_path: Path, capsys):
    assert main(["--runs-dir", str(finished_run), "evaluate", "tiny", "--epoch", "7"]) == 2
    assert "epoch 7 of run 'tiny' is not finished (finished: 0-1)" in capsys.readouterr().err
    shutil.copytree(finished_run / "tiny", tmp_path / "tiny")
    (tmp_path / "tiny" / "data" / "labels.npy").unlink()
    with pytest.raises(RunError, match="has no labels"):
        evaluate_run(RunLayout(tmp_path, "tiny"))
    assert not (tmp_path / "tiny" / "evaluation.json").exists()


def test_quality_suite_trains_evaluates_and_writes_results(tmp_path: Path, monkeypatch):
    calls: list[list[str]] = []

    def fake_cli(args: list[str]) -> int:  # stands in for `deepcluster`: what the suite asks of it
        calls.append(args)
        run_id = args[args.index("evaluate") + 1] if "evaluate" in args else None
        if run_id:
            root = Path(args[1]) / run_id
            (root / "epochs" / "0000").mkdir(parents=True)
            (root / "epochs" / "0000" / "metrics.json").write_text(json.dumps(METRICS))
            seed = int(run_id.rsplit("seed", 1)[1])
            shift = 0.2 if "-two-" in run_id else 0.0
            (root / "evaluation.json").write_text(json.dumps(evaluation(0.5 + seed / 10 + shift)))
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
    assert calls[1] == ["--runs-dir", str(tmp_path), "evaluate", "quality-toy-one-default-seed0"]
    assert calls[4][:7] == ["--runs-dir", str(tmp_path), "run", "--limit", "9", "--k", "3"]
    assert len(calls) == 2 * 2 * 2 * 2  # datasets x configurations x seeds x (run, evaluate)
    section = quality.suite_markdown("toy", results)
    assert "Produced by `bench --suite toy` (" in section
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


def test_new_results_replace_their_dataset_and_configuration_only():
    earlier = {"one": {"default": {"runs": [1]}, "k3": {"runs": [2]}}, "two": {"default": {"runs": [3]}}}
    merged = quality.merge(earlier, {"one": {"k3": {"runs": [4]}}, "three": {"default": {"runs": [5]}}})
    assert merged == {
        "one": {"default": {"runs": [1]}, "k3": {"runs": [4]}},
        "two": {"default": {"runs": [3]}},
        "three": {"default": {"runs": [5]}},
    }
    assert earlier["one"]["k3"] == {"runs": [2]}  # the earlier results are not changed


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


def evaluation(nmi: float) -> dict:
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
            "0": {
                "epoch": 0,
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


def test_probes_use_the_test_split_where_the_dataset_has_one(prefect_harness, tmp_path: Path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "fmnist"
    data.mkdir()
    for prefix, count in (("train", 90), ("t10k", 30)):
        labels = np.arange(count, dtype=np.uint8) % 3
        images = (rng.integers(0, 60, (count, 28, 28)) + labels[:, None, None] * 80).astype(np.uint8)
        write_idx(data / f"{prefix}-images-idx3-ubyte", images, IDX_IMAGES_MAGIC)
        write_idx(data / f"{prefix}-labels-idx1-ubyte", labels, IDX_LABELS_MAGIC)
    args = ["run", "--dataset", "fashion-mnist", "--data-dir", str(data), "--k", "6", "--epochs", "1"]
    args += ["--min-epoch-samples", "0"]
    assert main(["--runs-dir", str(tmp_path / "runs"), *args, "--run-id", "split", "--no-progress"]) == 0
    epoch, evaluation = evaluate_run(RunLayout(tmp_path / "runs", "split"))
    result = evaluation["epochs"][str(epoch)]
    assert epoch == 0
    assert result["probe_split"] == "test split: 30 images"
    assert result["knn_accuracy"] > 0.9  # brightness differs by class (the Sobel front sees it at the borders)
    capsys.readouterr()
