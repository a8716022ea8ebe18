"""The errors the project raises on purpose. Each message says what was wrong, naming the config key, the
file or the run; the `deepcluster` command prints any DeepClusterError as one line (exit code 2)."""

from __future__ import annotations


class DeepClusterError(Exception):
    """Base of every error raised on purpose: a request that cannot be done as asked."""


class ConfigError(DeepClusterError, ValueError):
    """A configuration a user gave cannot be used; the message says which key and why."""


class DatasetError(DeepClusterError, ValueError):
    """A dataset cannot be loaded or used as configured."""


class RunError(DeepClusterError, ValueError):
    """A run cannot be used as asked (bad id, missing or damaged run, changed config or dataset)."""


class RunLockedError(RunError):
    """Another process is writing this run."""


class DivergedError(RunError):
    """Training diverged: a feature, centroid, loss or weight is no longer a finite number."""


class InputError(DeepClusterError, ValueError):
    """An algorithm was given inputs it cannot work on (too few points for k, a PCA dimension out of range, ...)."""


class MissingPackageError(DeepClusterError, ImportError):
    """An optional package that the configuration asks for is not installed."""
