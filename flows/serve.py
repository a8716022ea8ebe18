"""Serve the deployments of prefect.yaml from this process, without a work pool or worker.

    python -m flows.serve        # needs a Prefect server: PREFECT_API_URL, or `prefect server start`

The deployments (names, schedules, parameters, concurrency limits) are read from prefect.yaml,
so `prefect deploy` and this script always agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import yaml
from prefect import serve
from prefect.deployments.runner import RunnerDeployment

import flows.deepcluster_flow

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"


def build_deployments(path: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    """One served deployment per entry of prefect.yaml."""
    entries: list[dict[str, Any]] = yaml.safe_load(path.read_text())["deployments"]
    return [
        cast(
            RunnerDeployment,
            getattr(flows.deepcluster_flow, entry["entrypoint"].split(":")[1]).to_deployment(
                name=entry["name"],
                description=entry.get("description"),
                parameters=entry.get("parameters", {}),
                cron=[schedule["cron"] for schedule in entry.get("schedules", [])] or None,
                concurrency_limit=entry["concurrency_limit"]["limit"],
            ),
        )  # a RunnerDeployment when called outside an event loop
        for entry in entries
    ]


if __name__ == "__main__":
    serve(*build_deployments())
