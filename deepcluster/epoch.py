"""One DeepCluster epoch, the only epoch loop of the project:

    extract -> reduce -> cluster -> targets -> resample -> train -> score

The library runs it as it is (`run_epoch(session, epoch)`, nothing written). The flow runs the same loop with
each stage as a Prefect task (`stage`) and the epoch's outputs handed to a background writer into its run
(`outputs`) as soon as they exist, then the epoch's commit. Across ranks (`distributed`) every rank runs it,
and only the writer has `outputs`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from deepcluster import distributed, runs, stages
from deepcluster.kmeans import Clustering
from deepcluster.reduce import PCAWhitening
from deepcluster.runtime import timed
from deepcluster.stages import Session, require_finite


def call(function: Callable[..., Any], *args: Any) -> Any:
    """Run a stage as a plain function call (the library's way)."""
    return function(*args)


class EpochOutputs(Protocol):
    """Where an epoch's outputs go as soon as they exist; `commit` comes last, after all of them."""

    def begin(self, epoch: int) -> None: ...

    def features(self, epoch: int, features: np.ndarray) -> None: ...

    def clusters(
        self, epoch: int, assignments: np.ndarray, clustering: Clustering, pca: PCAWhitening | None
    ) -> None: ...

    def checkpoint(self, epoch: int, state: dict[str, Any]) -> None: ...

    def commit(self, epoch: int, metrics: dict[str, Any]) -> None: ...


def run_epoch(
    session: Session,
    epoch: int,
    progress: bool | None = None,
    stage: Callable[..., Any] = call,
    outputs: EpochOutputs | None = None,
) -> dict[str, Any]:
    """Run epoch `epoch` on `session` (its model, optimizer and previous assignments move on by one epoch) and
    return its metrics (the contents of metrics.json).

    stage(function, *args) runs each stage; outputs, if given, receives the epoch's outputs. A DivergedError
    stops the epoch before anything non-finite is handed over, so a diverged epoch is never committed."""
    config, device = session.config, session.device
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    def run(name: str, function: Callable[..., Any], *args: Any) -> Any:
        return timed(seconds, name, device, stage, function, *args)

    if outputs:
        outputs.begin(epoch)
    features, representation = run("extract", stages.extract, session, progress)
    require_finite(features, "features", epoch, config)
    if representation is not None:
        require_finite(representation, "representation", epoch, config)
    features, pca = run("pca", stages.reduce, features, config.pca_dim)
    require_finite(features, "reduced features (PCA-whitened)", epoch, config)
    gathered = distributed.gather_rows(features)  # of all ranks, on the writer (every rank takes part)
    if outputs and gathered is not None:
        outputs.features(epoch, gathered.cpu().numpy())
    del gathered
    clusterings = run("kmeans", stages.cluster, features, config, epoch, session.previous_assignments)
    neighbour_space = features if representation is None else representation
    targets = run("targets", stages.training_targets, neighbour_space, clusterings, config)
    del features, representation, neighbour_space
    assignments = clusterings[0].assignments.cpu().numpy()
    if outputs:
        outputs.clusters(epoch, assignments, clusterings[0], pca)
    sample = run("resample", stages.resample, clusterings[0].assignments, config, epoch)
    trained = run("train", stages.retrain, session, clusterings, targets, sample, epoch, progress)
    require_finite(trained.loss, "training losses", epoch, config)
    for name, weights in session.model.state_dict().items():
        require_finite(weights, f"trained weights ({name})", epoch, config)
    if outputs:
        outputs.checkpoint(epoch, runs.checkpoint(session, epoch))
    scores = run("evaluate", stages.score_clusters, session, assignments)
    session.previous_assignments = assignments
    seconds["epoch"] = round(time.perf_counter() - start, 4)
    record = stages.epoch_record(session, epoch, clusterings[0], trained, scores, seconds)
    if outputs:
        outputs.commit(epoch, record)
    return record
