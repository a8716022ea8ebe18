"""Shared fixtures: one Prefect test server for the whole session, a finished tiny run; tests that need either
are marked slow (`pytest -m "not slow"` is the fast unit run)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.helpers import tiny_config


def _temporary_dir(prefix: str) -> str:
    """A directory for this test session, removed when the session's process exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


# The runs of the tests take turns on the device among themselves, not with runs outside the tests.
os.environ["DEEPCLUSTER_LOCKS_DIR"] = _temporary_dir("deepcluster-test-locks-")
# Folders read through the input store store it here, not in the user's cache.
os.environ["DEEPCLUSTER_STORE_DIR"] = _temporary_dir("deepcluster-test-store-")


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect server and database, entered once per test session (it takes ~15 s; the harness's own
    30 s wait has been too short on a slow 2-core machine, so it waits as long as a run does)."""
    from prefect.testing.utilities import prefect_test_harness

    from flows import SERVER_STARTUP_TIMEOUT_S

    with prefect_test_harness(server_startup_timeout=SERVER_STARTUP_TIMEOUT_S):
        yield


@pytest.fixture(scope="session")
def finished_run(prefect_harness, tmp_path_factory) -> Path:
    """A 2-epoch flow run on 300 sample images; returns its runs directory (run id 'tiny')."""
    from flows.deepcluster_flow import deepcluster_flow

    runs_dir = tmp_path_factory.mktemp("runs")
    deepcluster_flow(config=tiny_config(), run_id="tiny", runs_dir=str(runs_dir), progress=False)
    return runs_dir


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that run the Prefect flow (its test server) are slow."""
    for item in items:
        if "prefect_harness" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
