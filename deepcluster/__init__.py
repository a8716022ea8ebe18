"""DeepCluster (Caron et al., ECCV 2018) as a plain library.

The algorithm lives here; Prefect tasks (`tasks/`) and flows (`flows/`) are thin
wrappers around these functions. Nothing in this package imports prefect, except
the `deepcluster run` command, which imports the flow when it runs it.
"""

__version__ = "0.1.0"
