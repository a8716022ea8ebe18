"""prefect.yaml deployed with `prefect deploy` and run by a process worker, then served with `python -m flows.serve`,
against one Prefect server: both kinds of deployment exist side by side, and runs take turns on the device."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepcluster.artifacts import RunLayout
from tests.helpers import tiny_config, training_span

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")
NAMES = ("on-demand", "nightly-fashion-mnist")  # the deployments of prefect.yaml


@pytest.fixture
def server_env(prefect_harness) -> dict[str, str]:
    """The environment of a process talking to the test server: its API, result storage, and fast polling."""
    from prefect.settings import get_current_settings

    return {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }


def test_deploy_and_serve_side_by_side(server_env: dict[str, str], tmp_path: Path):
    from prefect import get_client

    def prefect(*args: str) -> None:
        subprocess.run([PREFECT, *args], cwd=ROOT, env=server_env, check=True, capture_output=True, timeout=240)

    tiny = {"overrides": {**tiny_config().to_json_dict(), "device": "cpu"}, "runs_dir": str(tmp_path)}
    prefect("work-pool", "create", "deepcluster", "--type", "process")
    prefect("deploy", "--all")
    with get_client(sync_client=True) as client:
        deployed = {name: client.read_deployment_by_name(f"deepcluster/{name}") for name in NAMES}
        queued = [client.create_flow_run_from_deployment(each.id, parameters=tiny).id for each in deployed.values()]
    prefect("worker", "start", "--pool", "deepcluster", "--run-once")  # runs both, then stops
    with get_client(sync_client=True) as client:
        runs = [client.read_flow_run(each) for each in queued]
    assert [run.state.type.value for run in runs] == ["COMPLETED", "COMPLETED"]
    results = [run.state.result() for run in runs]
    assert [result["epochs"] for result in results] == [2, 2] and results[0]["run_id"] != results[1]["run_id"]
    # from two deployments at once, yet one after the other on the device
    spans = sorted(training_span(tmp_path, result["run_id"]) for result in results)
    assert spans[0][1] <= spans[1][0]

    served = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=ROOT, env=server_env)
    try:
        with get_client(sync_client=True) as client:
            deployment = _wait_for(lambda: _deployment(client, "deepcluster/on-demand-served"))
            flow_run = client.create_flow_run_from_deployment(deployment.id, parameters={**tiny, "run_id": "served"})
            finished = _wait_for(lambda: _final(client.read_flow_run(flow_run.id)))
            assert finished.state.type.value == "COMPLETED"
            assert RunLayout(tmp_path, "served").completed_epochs() == [0, 1]
    finally:
        served.terminate()
        served.wait(timeout=60)
    with get_client(sync_client=True) as client:
        for name in NAMES:  # serving neither replaced nor paused what `prefect deploy` made
            ours, theirs = client.read_deployment_by_name(f"deepcluster/{name}"), deployed[name]
            assert (ours.id, ours.work_pool_name, ours.pull_steps) == (theirs.id, "deepcluster", theirs.pull_steps)
            assert ours.job_variables["env"]["DEEPCLUSTER_RUNS_DIR"] == f"{ROOT}/runs"
            assert not ours.paused and all(schedule.active for schedule in ours.schedules)
            twin = client.read_deployment_by_name(f"deepcluster/{name}-served")
            assert twin.id != ours.id and twin.paused and twin.parameters == ours.parameters  # paused by stopping serve
            assert [(s.schedule.cron, s.schedule.timezone) for s in twin.schedules] == [
                (s.schedule.cron, s.schedule.timezone) for s in ours.schedules
            ]
            assert twin.concurrency_options.collision_strategy.value == "ENQUEUE"
            assert twin.global_concurrency_limit.limit == 1
        nightly = client.read_deployment_by_name("deepcluster/nightly-fashion-mnist")
        assert [(s.schedule.cron, s.schedule.timezone) for s in nightly.schedules] == [("0 2 * * *", "UTC")]


def _deployment(client, name: str):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None


def _final(flow_run):
    return flow_run if flow_run.state and flow_run.state.is_final() else None


def _wait_for(probe, timeout: float = 180):
    """probe() until it returns something, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (found := probe()) is None:
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)
    return found
