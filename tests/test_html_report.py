"""`deepcluster report` and `compare` on finished tiny runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from deepcluster import artifacts
from deepcluster.cli import main
from tests.helpers import tiny_config, write_images

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def referenced_files(index: Path) -> list[Path]:
    return [index.parent / name for name in re.findall(r"src='([^']+)'", index.read_text())]


def test_the_flow_writes_a_report_whose_images_all_exist(finished_run: Path):
    index = finished_run / "tiny" / "report" / "index.html"
    page = index.read_text()
    for heading in ("Metrics over epochs", "Cluster sizes (epoch 1)", "Clusters against labels", "projected to 2-D"):
        assert heading in page
    assert page.count("<td class='ok'>verified</td>") == 4  # the run's shape, data, epoch 0, epoch 1
    files = referenced_files(index)
    assert {"curves.png", "sizes.png", "confusion.png", "projection.png", "stages.png"} <= {f.name for f in files}
    assert sum(file.name.startswith("cluster-") for file in files) == 10  # k = 10, all shown
    for file in files:
        with Image.open(file) as image:
            assert image.format == "PNG" and image.width > 20 and image.height > 20, file


def test_report_of_an_earlier_epoch_and_of_an_altered_run(finished_run: Path, tmp_path: Path, capsys):
    shutil.copytree(finished_run / "tiny", tmp_path / "tiny")
    out = tmp_path / "out"
    assert main(["--runs-dir", str(tmp_path), "report", "tiny", "--epoch", "0", "--out", str(out)]) == 0
    assert f"report written to {out / 'index.html'}" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    assert "figures for epoch 0" in page and "Cluster sizes (epoch 0)" in page
    assert all(file.is_file() for file in referenced_files(out / "index.html"))
    metrics = tmp_path / "tiny" / "epochs" / "0001" / "metrics.json"
    metrics.write_text(metrics.read_text() + "\n")  # still valid JSON, no longer the bytes of the manifest
    assert main(["--runs-dir", str(tmp_path), "report", "tiny", "--out", str(tmp_path / "again")]) == 2
    assert "0001/metrics.json: content differs from the manifest" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


def test_report_errors_name_the_problem(finished_run: Path, tmp_path: Path, capsys):
    assert main(["--runs-dir", str(finished_run), "report", "tiny", "--epoch", "4", "--out", str(tmp_path)]) == 2
    assert "epoch 4 of run 'tiny' is not finished (finished: 0-1)" in capsys.readouterr().err
    assert main(["--runs-dir", str(finished_run), "report", "ghost"]) == 2
    assert "no run 'ghost'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    (tmp_path / "file").write_text("mine")
    assert main(["--runs-dir", str(finished_run), "report", "tiny", "--out", str(tmp_path / "file")]) == 2
    assert "file exists and is not a directory" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "mine"


def test_report_renders_in_chromium(finished_run: Path, tmp_path: Path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's chromium package where it can)")
    index = finished_run / "tiny" / "report" / "index.html"
    screenshot = tmp_path / "report.png"
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600"]
    subprocess.run(
        [*command, f"--screenshot={screenshot}", index.as_uri()], capture_output=True, timeout=120, check=True
    )
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.shape == (1600, 1200)
    assert (pixels < 200).mean() > 0.02 and pixels.std() > 20  # text, plots and sample images, not a blank page


def test_compare_shows_the_keys_that_differ(finished_run: Path, tmp_path: Path, capsys):
    for run in ("tiny", "other"):
        shutil.copytree(finished_run / "tiny", tmp_path / run)
    record = json.loads((tmp_path / "other" / "run.json").read_text())
    record["config"]["lr"] = 0.2
    (tmp_path / "other" / "run.json").write_text(json.dumps(record))
    out = tmp_path / "cmp"
    assert main(["--runs-dir", str(tmp_path), "compare", "tiny", "other", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    differing = printed.split("last finished epoch")[0]
    assert re.search(r"lr\s+0\.05\s+0\.2", differing) and "seed" not in differing and "epochs" not in differing
    page = (out / "index.html").read_text()
    assert "<td class='num'>lr</td><td class='num'>0.05</td><td class='num'>0.2</td>" in page
    assert all(file.is_file() for file in referenced_files(out / "index.html"))
    assert main(["--runs-dir", str(tmp_path), "compare", "tiny"]) == 2
    assert "compare needs at least two runs" in capsys.readouterr().err
    assert main(["--runs-dir", str(tmp_path), "compare", "tiny", "ghost"]) == 2
    assert "no run 'ghost'" in capsys.readouterr().err


def test_report_and_predict_on_a_run_without_labels(prefect_harness, tmp_path: Path, capsys):
    from flows.deepcluster_flow import deepcluster_flow

    write_images(tmp_path / "images", 16, "L", count=40)
    config = tiny_config(dataset=str(tmp_path / "images"), limit=None, num_clusters=4, batch_size=16)
    deepcluster_flow(config=config, run_id="unlabelled", runs_dir=str(tmp_path / "runs"), progress=False)
    index = tmp_path / "runs" / "unlabelled" / "report" / "index.html"
    page = index.read_text()
    assert "Cluster sizes (epoch 1)" in page and "Clusters against labels" not in page and "Not evaluated" in page
    assert all(file.is_file() for file in referenced_files(index)) and not (index.parent / "confusion.png").exists()
    out = tmp_path / "predicted.parquet"
    args = ["--runs-dir", str(tmp_path / "runs"), "predict", "unlabelled", str(tmp_path / "images"), "--out", str(out)]
    assert main(args) == 0
    assert "NMI" not in capsys.readouterr().out
    predicted = pq.read_table(out).to_pandas()
    assignments = artifacts.read_clusters(tmp_path / "runs" / "unlabelled" / "epochs" / "0001" / "assignments.parquet")
    assert predicted["cluster"].tolist() == assignments.tolist() and predicted["label"].isna().all()
