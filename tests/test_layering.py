"""The library never imports Prefect, the flows or the benchmarks: only the commands that run the flow load it.
The command's entry point and the decoding workers import no torch."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_library_modules_do_not_import_prefect():
    modules = sorted(path.stem for path in (ROOT / "deepcluster").glob("*.py") if path.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module('deepcluster.' + name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'flows', 'tasks', 'benchmarks')))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "cli" in modules and "kmeans" in modules
    assert result.stdout.strip() == "[]"


ALGORITHM = {"sobel", "models", "features", "reduce", "kmeans", "neighbours", "sampling", "train", "metrics", "rng"}
ALGORITHM |= {"progress", "errors", "config", "data", "loader", "distributed"}  # the layers of docs/ARCHITECTURE.md


def test_algorithm_modules_import_no_run_module():
    """The algorithm layer (docs/ARCHITECTURE.md) imports nothing of the runs, the flows or the commands."""
    import ast

    for name in sorted(ALGORITHM):
        tree = ast.parse((ROOT / "deepcluster" / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {
            f"deepcluster.{alias.name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "deepcluster"
            for alias in node.names
        }
        ours = {module.split(".")[1] for module in imported if module.startswith("deepcluster.")}
        assert ours <= ALGORITHM, f"deepcluster/{name}.py imports {sorted(ours - ALGORITHM)}"


def test_the_entry_point_and_the_decoding_workers_import_no_torch():
    """A spawned decoding worker imports the command's entry point (its parent's main module) and
    deepcluster.decode: neither may import torch, whose import takes seconds."""
    code = (
        "import sys, deepcluster.__main__, deepcluster.decode\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'sklearn', 'prefect')))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_training_process_imports_no_scikit_learn_or_matplotlib():
    """What the flow and a rank import to train: scikit-learn (about a second and 150 MB) comes with grouping and
    evaluation, matplotlib with the report, both after training; SciPy with the first epoch scored against labels."""
    code = (
        "import sys, flows.deepcluster_flow, deepcluster.ranks, deepcluster.epoch\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy', 'matplotlib', 'pandas'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
