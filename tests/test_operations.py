"""Prefect-native operation: a retried flow run continues its own run; overrides merge into a config."""

from datetime import UTC
from pathlib import Path

import pytest

from deepcluster import artifacts
from deepcluster.artifacts import RunLayout
from deepcluster.errors import ConfigError
from tests.helpers import tiny_config, training_span


def test_a_flow_run_retried_by_prefect_continues_its_own_run(
    prefect_harness, finished_run: Path, tmp_path: Path, monkeypatch
):
    from prefect import get_client

    from deepcluster import runs
    from flows.deepcluster_flow import deepcluster_flow_with_retries

    original, failures = runs.write_checkpoint, []

    def failing_once_on_epoch_1(layout, epoch, state):
        if epoch == 1 and not failures:
            failures.append(epoch)
            raise OSError("No space left on device")
        original(layout, epoch, state)

    monkeypatch.setattr(runs, "write_checkpoint", failing_once_on_epoch_1)
    retrying = deepcluster_flow_with_retries.with_options(retry_delay_seconds=0)  # the scheduled deployment's flow
    root = Path(retrying(config=tiny_config(), runs_dir=str(tmp_path), progress=False)["run_dir"])  # no run id given
    assert failures == [1]
    assert sorted(path.name for path in tmp_path.iterdir()) == [root.name]  # one run directory, no lock left
    layout = RunLayout(tmp_path, root.name)
    flow_runs = artifacts.read_run_record(layout)["flow_runs"]
    assert len(flow_runs) == 1  # one flow run, two attempts
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_runs[0])
    assert flow_run.name == f"{root.name} fashion-mnist-sample" and flow_run.run_count == 2
    result = flow_run.state.result()  # persisted: read back through the API
    assert result["run_dir"] == str(root) and result["epochs"] == 2 and result["last_epoch"]["epoch"] == 1
    assert artifacts.read_run_record(layout)["runs_dir"] == str(tmp_path.resolve())
    assert root.name == f"{flow_run.created.astimezone(UTC):%Y%m%d-%H%M%S}-{flow_run.id.hex[-8:]}"
    straight = RunLayout(finished_run, "tiny")
    assert layout.completed_epochs() == [0, 1]
    for epoch in (0, 1):
        for name in ("features.parquet", "assignments.parquet", artifacts.CENTROIDS, "model.pt"):
            assert (layout.epoch_dir(epoch) / name).read_bytes() == (straight.epoch_dir(epoch) / name).read_bytes()


def test_overrides_replace_only_their_keys(prefect_harness, tmp_path: Path):
    from flows.deepcluster_flow import deepcluster_flow

    base = tiny_config(num_clusters=7)
    deepcluster_flow(config=base, run_id="o", runs_dir=str(tmp_path), progress=False, overrides={"epochs": 1})
    recorded = artifacts.read_run_record(RunLayout(tmp_path, "o"))["config"]
    assert (recorded["epochs"], recorded["num_clusters"], recorded["limit"]) == (1, 7, 300)
    with pytest.raises(ConfigError, match="nope"):
        deepcluster_flow(config=base, run_id="p", runs_dir=str(tmp_path), progress=False, overrides={"nope": 1})
    with pytest.raises(ConfigError, match="epochs"):
        deepcluster_flow(config=base, run_id="p", runs_dir=str(tmp_path), progress=False, overrides={"epochs": 0})
    assert not (tmp_path / "p").exists()


def test_runs_take_turns_on_a_device(prefect_harness, tmp_path: Path):
    """Two flow runs started together on one device: the second waits for the first to end."""
    from concurrent.futures import ThreadPoolExecutor

    from flows.deepcluster_flow import deepcluster_flow

    def run(run_id: str) -> dict:
        return deepcluster_flow(config=tiny_config(), run_id=run_id, runs_dir=str(tmp_path), progress=False)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, ["first", "second"]))
    assert [result["epochs"] for result in results] == [2, 2]
    spans = sorted(training_span(tmp_path, run_id) for run_id in ("first", "second"))
    assert spans[0][1] <= spans[1][0]  # the later run started after the earlier one had written its report


def test_run_json_lists_every_flow_run_that_worked_on_the_run(prefect_harness, tmp_path: Path):
    from flows.deepcluster_flow import deepcluster_flow

    for epochs in (1, 2):  # a second flow run extends the run
        deepcluster_flow(config=tiny_config(epochs=epochs), run_id="twice", runs_dir=str(tmp_path), progress=False)
    record = artifacts.read_run_record(RunLayout(tmp_path, "twice"))
    assert len(record["flow_runs"]) == len(set(record["flow_runs"])) == 2
    assert record["runs_dir"] == str(tmp_path.resolve())
