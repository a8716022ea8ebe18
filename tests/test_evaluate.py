"""`deepcluster evaluate` on a finished tiny run."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from deepcluster import artifacts, evaluate
from deepcluster.artifacts import RunLayout
from deepcluster.cli import main
from deepcluster.config import Config
from deepcluster.data import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC
from deepcluster.errors import RunError
from deepcluster.evaluate import evaluate_run, flat_pixels, grouping_scores, knn_accuracy, linear_probe_accuracy
from tests.helpers import write_idx


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
    assert re.search(r"epoch 1, conv \(2048-d\) +kmeans", table)
    evaluation = json.loads((tmp_path / "tiny" / "evaluation.json").read_text())
    result = evaluation["epochs"]["1"]
    assert evaluation["num_classes"] == 3 and set(evaluation["baselines"]) == {"pixels", "sobel_pixels"}
    assert result["grouping"] == Config().grouping  # the run's config
    for features in ("clustered", "conv"):
        for scores in result["groupings"][features].values():
            assert 0 <= scores["nmi"] <= 1 and 0 <= scores["acc"] <= 1
    assert 0 <= result["knn_accuracy"] <= 1 and result["images"] == {"scored": 300, "of": 300}
    assert result["probe_split"].startswith("holdout: 60 of the 300 images scored")
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
    assert result["graph_neighbours"] == again["baselines_graph_neighbours"] == evaluate.GRAPH_NEIGHBOURS
    # baselines grouped on graphs of other sizes are computed again
    stale = {**again, "baselines_graph_neighbours": {"spectral": 10, "snn": 10}}
    stale["baselines"]["pixels"]["groupings"]["snn"]["nmi"] = -1.0
    (tmp_path / "tiny" / "evaluation.json").write_text(json.dumps(stale))
    assert main(["--runs-dir", str(tmp_path), "evaluate", "tiny"]) == 0
    again = json.loads((tmp_path / "tiny" / "evaluation.json").read_text())
    assert again["baselines"] == evaluation["baselines"]
    assert again["baselines_graph_neighbours"] == evaluate.GRAPH_NEIGHBOURS


def test_a_large_run_is_scored_on_a_fixed_subset(finished_run: Path, tmp_path: Path, monkeypatch, capsys):
    shutil.copytree(finished_run / "tiny", tmp_path / "tiny")
    assert main(["--runs-dir", str(tmp_path), "evaluate", "tiny"]) == 0  # every image, baselines included
    monkeypatch.setattr(evaluate, "EVALUATION_MAX_IMAGES", 100)
    rows = evaluate.scored_rows(300)
    assert len(rows) == 100 and np.all(np.diff(rows) > 0) and np.array_equal(rows, evaluate.scored_rows(300))
    assert evaluate.scored_rows(100) == range(100)
    assert main(["--runs-dir", str(tmp_path), "evaluate", "tiny"]) == 0
    assert "scored on a fixed random 100 of the run's 300 images" in capsys.readouterr().out
    evaluation = json.loads((tmp_path / "tiny" / "evaluation.json").read_text())
    result = evaluation["epochs"]["1"]
    assert result["images"] == {"scored": 100, "of": 300}
    assert result["probe_split"].startswith("holdout: 20 of the 100 images scored")
    images = artifacts.load_array(tmp_path / "tiny" / "data" / "images.npy")[rows]
    labels = artifacts.load_array(tmp_path / "tiny" / "data" / "labels.npy")[rows]
    # the baselines, computed on every image before, score the same images now, and nothing else
    assert evaluation["baselines"]["pixels"]["groupings"]["kmeans"] == grouping_scores(flat_pixels(images), labels)


def test_evaluate_refuses_unfinished_epochs_and_unlabelled_runs(finished_run: Path, tmp_path: Path, capsys):
    assert main(["--runs-dir", str(finished_run), "evaluate", "tiny", "--epoch", "7"]) == 2
    assert "epoch 7 of run 'tiny' is not finished (finished: 0-1)" in capsys.readouterr().err
    shutil.copytree(finished_run / "tiny", tmp_path / "tiny")
    (tmp_path / "tiny" / "data" / "labels.npy").unlink()
    with pytest.raises(RunError, match="labels.npy: missing"):  # altered after the fact
        evaluate_run(RunLayout(tmp_path, "tiny"))
    artifacts.write_manifest(tmp_path / "tiny" / "data")  # as a run on unlabelled images has it
    with pytest.raises(RunError, match="has no labels"):
        evaluate_run(RunLayout(tmp_path, "tiny"))
    assert not (tmp_path / "tiny" / "evaluation.json").exists()


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
