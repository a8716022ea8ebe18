"""The README's code that reads a run's artifacts with pandas, DuckDB and polars, run on a finished run."""

import re
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def readme_reader_code() -> str:
    """The README's Python block that reads the artifacts."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    (code,) = [block for block in blocks if "import duckdb" in block]
    return code


def run_readme_code(root: Path, last_epoch: int) -> dict:
    code = readme_reader_code()
    code = re.sub(r'run = "[^"]*"', f"run = {str(root)!r}", code).replace("0009", f"{last_epoch:04d}")
    names: dict = {}
    exec(compile(code, "README.md", "exec"), names)  # noqa: S102 (the README's own code)
    return names


def test_the_readme_reads_a_run(finished_run: Path, tmp_path: Path):
    root = tmp_path / "tiny"
    shutil.copytree(finished_run / "tiny", root)
    # an epoch being written: the readers' globs must not see it
    shutil.copytree(root / "epochs" / "0001", root / "staging" / "0002")
    found = run_readme_code(root, last_epoch=1)

    assert list(found["clusters"].columns) == ["index", "cluster", "label"] and len(found["clusters"]) == 300
    sizes = found["sizes"]
    assert sorted(set(sizes["epoch"])) == [0, 1] and sizes.groupby("epoch")["size"].sum().tolist() == [300, 300]
    nearest = found["nearest"]
    assert len(nearest) == 5 and nearest["index"][0] == 0 and abs(nearest["similarity"][0] - 1) < 1e-5
    features = found["features"]
    assert features.shape == (300, found["d"]) and features.dtype == np.float32
    history = found["history"]
    assert sorted(history["epoch"].unique().to_list()) == [0, 1] and history.height == 600
