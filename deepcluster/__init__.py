"""DeepCluster (Caron et al., ECCV 2018) as a plain library.

The algorithm and the runs live here (docs/ARCHITECTURE.md); Prefect tasks (`tasks/`) and flows (`flows/`)
are thin wrappers around these functions. Nothing in this package imports Prefect: the `deepcluster`
command loads the flow (`flows.load_flow`) only in the commands that run it.
"""

__version__ = "0.1.0"
