"""`deepcluster predict`: new images assigned to the clusters of a finished run's epoch."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from deepcluster import artifacts
from deepcluster.cli import main
from tests.helpers import tiny_config, write_images


@pytest.fixture(scope="module")
def pca_run(prefect_harness, tmp_path_factory) -> Path:
    """A 2-epoch run of the paper's set-up (random top layer, PCA-whitening to 16 dimensions)."""
    from flows.deepcluster_flow import deepcluster_flow

    runs_dir = tmp_path_factory.mktemp("pca-runs")
    config = tiny_config(head="linear", pca_dim=16, num_clusters=8)
    deepcluster_flow(config=config, run_id="pca", runs_dir=str(runs_dir), progress=False)
    return runs_dir


@pytest.mark.parametrize("run", ["tiny", "pca"])
def test_predict_on_the_training_images_gives_each_epochs_assignments(
    run: str, finished_run: Path, pca_run: Path, tmp_path: Path, capsys
):
    runs_dir = finished_run if run == "tiny" else pca_run
    for epoch in (0, 1):
        out = tmp_path / f"{run}-{epoch}.parquet"
        args = ["--runs-dir", str(runs_dir), "predict", run, "fashion-mnist-sample", "--limit", "300"]
        assert main([*args, "--epoch", str(epoch), "--out", str(out), "--no-progress"]) == 0
        assert f"300 images of fashion-mnist-sample assigned to the clusters of run {run}, epoch {epoch}" in (
            capsys.readouterr().out
        )
        predicted = pq.read_table(out).to_pandas()
        epoch_dir = runs_dir / run / "epochs" / f"{epoch:04d}"
        assert predicted["cluster"].tolist() == artifacts.read_clusters(epoch_dir / "assignments.parquet").tolist()
        assert predicted["index"].tolist() == list(range(300)) and predicted["path"].isna().all()
        assert (predicted["distance"] >= 0).all() and predicted["label"].notna().all()
    assert (runs_dir / run / "epochs" / "0001" / "pca_mean.npy").is_file() == (run == "pca")


def test_predict_a_folder_and_its_errors(finished_run: Path, tmp_path: Path, capsys):
    write_images(tmp_path / "good", 28, "L")
    write_images(tmp_path / "big", 32, "L")
    write_images(tmp_path / "colour", 28, "RGB")
    base = ["--runs-dir", str(finished_run), "predict", "tiny"]
    out = tmp_path / "good.parquet"
    assert main([*base, str(tmp_path / "good"), "--out", str(out)]) == 0
    predicted = pq.read_table(out).to_pandas()
    assert predicted["path"].tolist() == [f"image{index}.png" for index in range(4)]
    assert predicted["cluster"].between(0, 9).all() and predicted["label"].isna().all()

    assert main([*base, str(tmp_path / "big"), "--out", str(tmp_path / "x.parquet")]) == 2
    assert "images are 32x32 pixels but run 'tiny' was trained on 28x28 images" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "colour"), "--out", str(tmp_path / "x.parquet")]) == 2
    assert "images are RGB (3 channels) but run 'tiny' was trained on grayscale (1 channel)" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "good"), "--epoch", "3", "--out", str(tmp_path / "x.parquet")]) == 2
    assert "epoch 3 of run 'tiny' is not finished" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "good"), "--out", str(tmp_path / "missing" / "x.parquet")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "nowhere")]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()
