"""Prefect flows of the project: the DeepCluster flow (`deepcluster_flow`) and serving its deployments."""

from __future__ import annotations

import logging
import os
from typing import Any

SERVER_STARTUP_TIMEOUT_S = 120  # how long a run waits for Prefect's temporary server, unless the user sets it


def load_flow() -> Any:
    """The DeepCluster flow, with Prefect set up as the `deepcluster` command runs it (also what `bench`
    measures). Importing `flows` alone does not import Prefect."""
    # The temporary server would try to send usage telemetry, which fails (loudly) offline.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Ctrl-C in a terminal reaches the temporary server too, whose services then log their cancelled
    # database writes as errors with tracebacks. The run's own errors are the client's, and still show.
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    # Prefect waits 20 s for the temporary server, which has taken more than 30 s on a slow 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(SERVER_STARTUP_TIMEOUT_S))
    from flows.deepcluster_flow import deepcluster_flow

    # Its database pool logs those cancelled writes too, through the root logger. Set once Prefect has set up
    # this process's logging (on import), so only the temporary server, started later, takes it: this
    # process's library warnings still show.
    os.environ.setdefault("PREFECT_LOGGING_ROOT_LEVEL", "CRITICAL")
    # Task states show in the UI; on the terminal, the flow's per-epoch lines are enough.
    logging.getLogger("prefect.task_runs").setLevel(logging.WARNING)
    return deepcluster_flow
