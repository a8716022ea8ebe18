"""Thin Prefect tasks, one per DeepCluster stage; each calls one function of the `deepcluster` library.

Tasks never cache: a run's progress lives in its committed epoch directories, which is what
resuming reads.
"""

from tasks.stages import (
    balanced_resample,
    cluster_kmeans,
    extract_features,
    ingest,
    load_session,
    pca_reduce,
    retrain,
    run_as_task,
    score_clusters,
    sobel_preprocess,
    train_on_ranks,
    training_targets,
    write_groups,
    write_report,
)

__all__ = [
    "balanced_resample",
    "cluster_kmeans",
    "extract_features",
    "ingest",
    "load_session",
    "pca_reduce",
    "retrain",
    "run_as_task",
    "score_clusters",
    "sobel_preprocess",
    "train_on_ranks",
    "training_targets",
    "write_groups",
    "write_report",
]
