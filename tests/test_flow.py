"""The Prefect flow end to end on 300 sample images, under one session-scoped test server."""

import base64
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from deepcluster import artifacts
from deepcluster.artifacts import RunLayout, RunLock
from deepcluster.errors import RunError, RunLockedError
from tests.helpers import tiny_config

EPOCH_FILES = ["assignments.parquet", "centroids.npy", "features.parquet", "manifest.json", "metrics.json", "model.pt"]


def test_flow_writes_every_epoch_artifact(finished_run: Path):
    layout = RunLayout(finished_run, "tiny")
    assert layout.completed_epochs() == [0, 1]
    record = json.loads(layout.run_json.read_text())
    assert record["config"]["num_clusters"] == 10 and record["dataset"]["name"] == "fashion-mnist-sample"
    assert len(record["dataset"]["fingerprint"]) == 64 and record["device"] == "cpu"
    assert {"torch", "prefect", "numpy"} <= set(record["versions"])
    for epoch in (0, 1):
        directory = layout.epoch_dir(epoch)
        assert sorted(path.name for path in directory.iterdir()) == EPOCH_FILES
        assert artifacts.verify_manifest(directory) == []
        features = pq.read_table(directory / "features.parquet")
        assert features.num_rows == 300 and features.schema.field("features").type.list_size == 128  # proj_dim
        assignments = pq.read_table(directory / "assignments.parquet")
        assert assignments.column("label").null_count == 0
        metrics = json.loads((directory / "metrics.json").read_text())
        stages = {"extract", "pca", "kmeans", "targets", "resample", "train", "evaluate", "epoch", "write"}
        assert set(metrics["stage_seconds"]) == stages and metrics["stage_seconds"]["write"] > 0
        assert metrics["cluster_sizes"]["empty"] == 0
        assert (metrics["nmi_previous"] is None) == (epoch == 0)
        assert 0 <= metrics["labels"]["nmi"] <= 1 and 0 <= metrics["labels"]["acc"] <= 1
        checkpoint = torch.load(directory / "model.pt", weights_only=True)
        assert checkpoint["epoch"] == epoch and set(checkpoint) == {"model", "optimizer", "epoch"}
        assert not any(key.startswith("head") for key in checkpoint["model"])  # no top layer


def test_flow_publishes_prefect_artifacts(prefect_harness, tmp_path: Path):
    from prefect.artifacts import Artifact

    from flows.deepcluster_flow import deepcluster_flow

    deepcluster_flow(config=tiny_config(epochs=1), run_id="Published_Run", runs_dir=str(tmp_path), progress=False)
    table = Artifact.get("deepcluster-published-run")
    summary = Artifact.get("deepcluster-published-run-summary")
    assert table is not None and [row["epoch"] for row in json.loads(table.data)] == [0]
    assert summary is not None and "DeepCluster run `Published_Run`" in summary.data
    report = tmp_path / "Published_Run" / "report" / "index.html"
    assert f"- report: [{report.resolve()}]({report.resolve().as_uri()})" in summary.data
    for name, title in (("curves.png", "Metrics over epochs"), ("confusion.png", "Clusters against labels")):
        encoded = base64.b64encode((report.parent / name).read_bytes()).decode()
        assert f"![{title}](data:image/png;base64,{encoded})" in summary.data  # seen in the UI, no file access
    link = Artifact.get("deepcluster-published-run-report")
    assert link is not None and report.resolve().as_uri() in link.data and report.is_file()


def test_rerunning_a_finished_run_changes_nothing_and_more_epochs_extend_it(finished_run: Path, tmp_path: Path):
    from flows.deepcluster_flow import deepcluster_flow

    shutil.copytree(finished_run / "tiny", tmp_path / "tiny")
    before = (tmp_path / "tiny" / "epochs" / "0001" / "manifest.json").read_text()
    deepcluster_flow(config=tiny_config(), run_id="tiny", runs_dir=str(tmp_path), progress=False)
    assert (tmp_path / "tiny" / "epochs" / "0001" / "manifest.json").read_text() == before
    assert RunLayout(tmp_path, "tiny").completed_epochs() == [0, 1]
    assert not (tmp_path / "tiny" / "groups").exists()  # no groups asked for
    # more epochs, and (keys that change nothing trained) the images in 4 groups at the end, self-labelled otherwise
    config = tiny_config(epochs=3, groups=4, self_label=1)
    deepcluster_flow(config=config, run_id="tiny", runs_dir=str(tmp_path), progress=False)
    assert RunLayout(tmp_path, "tiny").completed_epochs() == [0, 1, 2]
    assert json.loads((tmp_path / "tiny" / "run.json").read_text())["config"]["self_label"] == 1
    groups = pd.read_parquet(tmp_path / "tiny" / "groups" / f"epoch0002-4-{config.grouping}.parquet")
    assert len(groups) == 300 and set(groups["group"]) == {0, 1, 2, 3}
    assert (tmp_path / "tiny" / "epochs" / "0001" / "manifest.json").read_text() == before


def test_flow_continues_a_run_on_two_ranks(finished_run: Path, tmp_path: Path):
    """As a deployment run does with the parameter overrides={"nproc_per_node": 2}."""
    from prefect.artifacts import Artifact

    from flows.deepcluster_flow import deepcluster_flow

    shutil.copytree(finished_run / "tiny", tmp_path / "tiny")
    overrides = {"nproc_per_node": 2, "epochs": 3}
    result = deepcluster_flow(config=tiny_config(), run_id="tiny", runs_dir=str(tmp_path), overrides=overrides)
    layout = RunLayout(tmp_path, "tiny")
    assert layout.completed_epochs() == [0, 1, 2] and result["last_epoch"]["epoch"] == 2
    assert json.loads(layout.run_json.read_text())["changes"][-1] == {
        "from_epoch": 2,
        "key": "nproc_per_node",
        "from": 1,
        "to": 2,
    }
    table = Artifact.get("deepcluster-tiny")
    assert table is not None and [row["epoch"] for row in json.loads(table.data)] == [0, 1, 2]
    artifacts.check_run(layout)


def test_flow_refuses_a_changed_config(finished_run: Path):
    from flows.deepcluster_flow import deepcluster_flow

    with pytest.raises(RunError, match=r"num_clusters: 10 -> 11"):
        deepcluster_flow(config=tiny_config(num_clusters=11), run_id="tiny", runs_dir=str(finished_run), progress=False)


def test_flow_refuses_a_run_locked_by_another_writer(prefect_harness, tmp_path: Path):
    from flows.deepcluster_flow import deepcluster_flow

    with RunLock(RunLayout(tmp_path, "busy")):
        with pytest.raises(RunLockedError, match="being written by another process"):
            deepcluster_flow(config=tiny_config(), run_id="busy", runs_dir=str(tmp_path), progress=False)
    assert not (tmp_path / "busy").exists()


def test_task_functions_run_without_prefect(tmp_path: Path):
    """Each task's .fn is the plain stage function: usable (and debuggable) without a server."""
    import tasks

    layout = RunLayout(tmp_path, "fn")
    config = tiny_config()
    info = tasks.ingest.fn(config, layout)
    assert tasks.sobel_preprocess.fn(layout, info.image_size) == layout.inputs
    session = tasks.load_session.fn(layout, config, 0, "cpu")
    extracted, representation = tasks.extract_features.fn(session, False)
    assert representation is None  # the neighbours are found among the clustered features by default
    features, _ = tasks.pca_reduce.fn(extracted, config.pca_dim)
    clusterings = tasks.cluster_kmeans.fn(features, config, 0)
    targets = tasks.training_targets.fn(features, clusterings, config)
    # soft targets (the default): each cluster's share among an image and its nearest neighbours
    assert targets[0].shape == (len(features), config.num_clusters)
    assert torch.allclose(targets[0].sum(dim=1), torch.ones(len(features)))
    own_share = targets[0].gather(1, clusterings[0].assignments.unsqueeze(1))
    assert (own_share >= 1 / (config.neighbours + 1)).all()
    hard = tasks.training_targets.fn(features, clusterings, config.model_copy(update={"neighbours": 0}))
    assert torch.equal(hard[0], clusterings[0].assignments)  # neighbours 0: the cluster ids themselves
    sample = tasks.balanced_resample.fn(clusterings[0].assignments, config, 0)
    assert tasks.retrain.fn(session, clusterings, targets, sample, 0, False).loss > 0
    assert tasks.score_clusters.fn(session, clusterings[0].assignments.numpy())["cluster_sizes"]["empty"] == 0


def test_every_stage_an_epoch_calls_has_its_task():
    """The flow runs each stage of an epoch as its task (`tasks.run_as_task`): one without a task would fail the
    flow's epochs only, with the options that call it."""
    from deepcluster import runs
    from deepcluster.epoch import run_epoch
    from tasks.stages import EPOCH_TASKS

    called = []

    def recorded(function, *args):
        called.append(function)
        return function(*args)

    for config in (tiny_config(), tiny_config(neighbour_features="representation")):
        called.clear()
        inputs, labels = runs.load_inputs(config)
        run_epoch(runs.new_session(config, inputs, labels, torch.device("cpu")), 0, False, recorded)
        assert set(called) == set(EPOCH_TASKS)


def test_flow_and_library_loop_compute_the_same_epochs(finished_run: Path):
    """The library runs the flow's epoch loop without Prefect and without writing: the same epochs."""
    from deepcluster import runs
    from deepcluster.epoch import run_epoch

    config = tiny_config()
    session = runs.new_session(config, *runs.load_inputs(config), torch.device("cpu"))
    layout = RunLayout(finished_run, "tiny")
    for epoch in (0, 1):
        metrics = run_epoch(session, epoch, progress=False)
        flow_metrics = json.loads((layout.epoch_dir(epoch) / "metrics.json").read_text())
        assert metrics["train_loss"] == flow_metrics["train_loss"]
        assert session.previous_assignments is not None
        assert (
            session.previous_assignments == artifacts.read_clusters(layout.epoch_dir(epoch) / "assignments.parquet")
        ).all()


def test_a_failed_background_write_commits_nothing_and_the_run_resumes_exactly(
    prefect_harness, finished_run: Path, tmp_path: Path, monkeypatch
):
    from deepcluster import runs
    from flows.deepcluster_flow import deepcluster_flow

    original = runs.write_checkpoint

    def failing_on_epoch_1(layout, epoch, state):
        if epoch == 1:
            raise OSError("No space left on device")
        original(layout, epoch, state)

    monkeypatch.setattr(runs, "write_checkpoint", failing_on_epoch_1)
    with pytest.raises(OSError, match="No space left on device"):
        deepcluster_flow(config=tiny_config(), run_id="tiny", runs_dir=str(tmp_path), progress=False)
    layout = RunLayout(tmp_path, "tiny")
    assert layout.completed_epochs() == [0]  # epoch 1 lacks its checkpoint: it was not committed
    monkeypatch.setattr(runs, "write_checkpoint", original)
    deepcluster_flow(config=tiny_config(), run_id="tiny", runs_dir=str(tmp_path), progress=False)
    straight = RunLayout(finished_run, "tiny")
    assert layout.completed_epochs() == [0, 1] and not list(layout.staging.glob("*"))
    for epoch in (0, 1):
        for name in ("features.parquet", "assignments.parquet", "model.pt"):
            ours = (layout.epoch_dir(epoch) / name).read_bytes()
            assert ours == (straight.epoch_dir(epoch) / name).read_bytes(), (epoch, name)
