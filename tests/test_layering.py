"""The library never imports Prefect, the flows or the benchmarks: only the commands that run the flow load it."""

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
