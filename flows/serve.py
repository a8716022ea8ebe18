"""Serve the deployments of prefect.yaml from this process, without a work pool or worker.

    python -m flows.serve        # needs a Prefect server: PREFECT_API_URL, or `prefect server start`

Each deployment of prefect.yaml is served under its own name plus `-served` (e.g. `deepcluster/on-demand-served`),
with the same description, schedules (cron and timezone), parameters and concurrency limit (limit and collision
strategy), so that serving never replaces or pauses a deployment made by `prefect deploy`: both can exist side
by side. Stopping this process pauses the served deployments' schedules only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import yaml
from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

import flows.deepcluster_flow

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"
SERVED_SUFFIX = "-served"


def build_deployments(path: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    """One served deployment per entry of prefect.yaml, named after it plus SERVED_SUFFIX."""
    entries: list[dict[str, Any]] = yaml.safe_load(path.read_text())["deployments"]
    return [
        cast(
            RunnerDeployment,
            getattr(flows.deepcluster_flow, entry["entrypoint"].split(":")[1]).to_deployment(
                name=entry["name"] + SERVED_SUFFIX,
                description=entry.get("description"),
                parameters=entry.get("parameters", {}),
                schedules=[Cron(each["cron"], timezone=each.get("timezone")) for each in entry.get("schedules", [])],
                concurrency_limit=ConcurrencyLimitConfig(**entry["concurrency_limit"]),
            ),
        )  # a RunnerDeployment when called outside an event loop
        for entry in entries
    ]


if __name__ == "__main__":
    serve(*build_deployments())
