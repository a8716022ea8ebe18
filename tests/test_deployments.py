"""prefect.yaml declares deployments whose entrypoints import and whose parameters validate."""

import importlib.util
from pathlib import Path

import pytest
import yaml

from deepcluster.config import Config

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def load_entrypoint(entrypoint: str):
    path, name = entrypoint.split(":")
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_entrypoint_imports_a_flow_and_parameters_validate(deployment):
    from prefect import Flow

    flow = load_entrypoint(deployment["entrypoint"])
    assert isinstance(flow, Flow) and flow.name == "deepcluster"
    assert (flow.retries or 0) == (2 if "schedules" in deployment else 0)  # the scheduled one retries
    Config.model_validate(deployment["parameters"]["config"])
    assert deployment["concurrency_limit"]["limit"] == 1


def test_prefect_accepts_the_file():
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(yaml.safe_load((ROOT / "prefect.yaml").read_text()))
    scheduled = [d for d in model.deployments if d.schedules]
    assert len(scheduled) == 1 and scheduled[0].schedules[0].cron == "0 2 * * *"


def test_served_deployments_mirror_prefect_yaml_under_names_of_their_own():
    from flows.serve import build_deployments

    deployments = {deployment.name: deployment for deployment in build_deployments()}
    assert set(deployments) == {entry["name"] + "-served" for entry in DEPLOYMENTS}
    nightly = deployments["nightly-fashion-mnist-served"]
    assert (nightly.schedules[0].schedule.cron, nightly.schedules[0].schedule.timezone) == ("0 2 * * *", "UTC")
    assert (nightly.concurrency_limit, nightly.concurrency_options.collision_strategy.value) == (1, "ENQUEUE")
    assert nightly.parameters["config"]["dataset"] == "fashion-mnist"
    assert nightly.entrypoint.endswith(":deepcluster_flow_with_retries")
    assert deployments["on-demand-served"].entrypoint.endswith(":deepcluster_flow")
    assert not deployments["on-demand-served"].schedules
