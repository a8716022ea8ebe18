"""SCAN's self-labelling before the final grouping (`selflabel`), and where runs use it: evaluate and group."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from deepcluster import loader, runs, selflabel
from deepcluster.artifacts import RunLayout
from deepcluster.cli import main
from deepcluster.config import Config, recorded_config
from deepcluster.evaluate import final_scores
from deepcluster.features import representation_features
from deepcluster.grouping import group, group_epoch
from deepcluster.metrics import nmi
from deepcluster.selflabel import confident_images, self_label


def test_confident_images_are_those_whose_neighbours_mostly_share_their_group():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    noise = 0.05 * torch.randn(60, 3, generator=generator)
    points = torch.nn.functional.normalize(centres.repeat_interleave(30, 0) + noise, dim=1)
    groups = torch.repeat_interleave(torch.arange(2), 30)
    wrong = 7
    groups[wrong] = 1  # a point of the first cloud put in the second's group
    confident = set(confident_images(points, groups).tolist())
    assert wrong not in confident  # its neighbours are all of the other group
    # every other point: its 20 nearest are of its own cloud, at most one of them (the wrong one) not of its group
    assert confident == set(range(60)) - {wrong}


def _tiny_model(run: Path) -> tuple[Config, torch.nn.Module, torch.Tensor]:
    layout = RunLayout(run.parent, run.name)
    config = recorded_config(json.loads(layout.run_json.read_text())["config"])
    model, _ = runs.load_model(layout.model(1), config, torch.device("cpu"))
    return config, model, loader.FileRows(layout.inputs).read()


def _grouped(model: torch.nn.Module, inputs: torch.Tensor, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """The model's representation of the inputs and its final grouping into 3, as the callers of self_label pass
    them."""
    features = representation_features(model, inputs, config.batch_size).numpy()
    return features, group(features, 3, config.grouping)


def test_self_labelling_trains_a_copy_the_same_way_each_time(finished_run: Path):
    config, model, inputs = _tiny_model(finished_run / "tiny")
    untouched = {name: value.clone() for name, value in model.state_dict().items()}
    features, groups = _grouped(model, inputs, config)
    off = config.model_copy(update={"self_label": 0})
    assert self_label(model, inputs, off, features, groups, 3, 1).model is model  # nothing to train
    config = config.model_copy(update={"self_label": 1})
    first, second = (self_label(model, inputs, config, features, groups, 3, 1) for _ in range(2))
    assert 0 < first.confident_share <= 1 and first.confident_share == second.confident_share
    for name, value in model.state_dict().items():
        assert torch.equal(value, untouched[name]), name  # the run's convnet stays as it was trained
    trained = first.model.state_dict()
    assert all(torch.equal(trained[name], value) for name, value in second.model.state_dict().items())
    assert any(not torch.equal(trained[name], value) for name, value in untouched.items())
    # another epoch draws other crops
    other = self_label(model, inputs, config, features, groups, 3, 0).model.state_dict()
    assert any(not torch.equal(trained[name], value) for name, value in other.items())


def test_self_labelling_draws_at_most_max_epoch_samples_images_a_pass(finished_run: Path, monkeypatch):
    config, model, inputs = _tiny_model(finished_run / "tiny")
    features, groups = _grouped(model, inputs, config)
    config = config.model_copy(update={"self_label": 2})
    batches: list[int] = []
    augment = selflabel.configured_crops
    monkeypatch.setattr(
        selflabel,
        "configured_crops",
        lambda images, *args, **kw: batches.append(len(images)) or augment(images, *args, **kw),
    )
    unlimited = self_label(model, inputs, config, features, groups, 3, 1)
    confident = round(unlimited.confident_share * len(inputs))
    assert sum(batches) == 2 * confident  # every confident image, each pass
    batches.clear()
    limited = self_label(model, inputs, config.model_copy(update={"max_epoch_samples": 100}), features, groups, 3, 1)
    assert batches == [64, 36, 64, 36]  # 100 images a pass, in batches of 64
    assert limited.confident_share == unlimited.confident_share
    # a limit of as many images as are confident changes nothing
    again = self_label(
        model, inputs, config.model_copy(update={"max_epoch_samples": confident}), features, groups, 3, 1
    )
    expected = unlimited.model.state_dict()
    assert all(torch.equal(expected[name], value) for name, value in again.model.state_dict().items())


def _self_labelling_copy(finished_run: Path, tmp_path: Path, passes: int) -> Path:
    """A copy of the tiny run whose config self-labels, as a run continued with --self-label records it."""
    shutil.copytree(finished_run / "tiny", tmp_path / "tiny")
    path = tmp_path / "tiny" / "run.json"
    record = json.loads(path.read_text())
    record["config"]["self_label"] = passes
    path.write_text(json.dumps(record))
    return tmp_path / "tiny"


def test_evaluate_scores_the_final_grouping_of_the_self_labelled_convnet(finished_run: Path, tmp_path: Path, capsys):
    run = _self_labelling_copy(finished_run, tmp_path, 1)
    assert main(["--runs-dir", str(tmp_path), "evaluate", "tiny"]) == 0
    table = capsys.readouterr().out
    assert "epoch 1, conv self-labelled (1 passes)" in table and "of the convnet self-labelled on the" in table
    result = json.loads((run / "evaluation.json").read_text())["epochs"]["1"]
    tuned = result["self_label"]
    assert tuned["passes"] == 1 and tuned["grouping"] == result["grouping"] == Config().grouping
    assert 0 < tuned["confident_share"] <= 1 and 0 <= tuned["nmi"] <= 1 and 0 <= tuned["knn_accuracy"] <= 1
    assert final_scores(result) is tuned  # the run's final grouping
    # the convnet's own groupings stay beside it, and `group` at k = classes gives the same self-labelled groups
    assert result["groupings"]["conv"][result["grouping"]]["nmi"] >= 0
    _, groups = group_epoch(RunLayout(tmp_path, "tiny"), 1, 3, result["grouping"], "cpu")
    config, model, inputs = _tiny_model(run)
    again = self_label(model, inputs, config, *_grouped(model, inputs, config), 3, 1)
    features = representation_features(again.model, inputs, config.batch_size).numpy()
    assert again.confident_share == tuned["confident_share"]
    assert np.array_equal(groups, group(features, 3, result["grouping"]))
    assert nmi(np.load(run / "data" / "labels.npy"), groups) == pytest.approx(tuned["nmi"])
