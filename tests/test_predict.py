"""`deepcluster predict`: new images assigned to the clusters of a finished run's epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from deepcluster import artifacts, decode, loader, store
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


def test_predict_reads_a_folder_through_the_input_store_a_batch_at_a_time(prefect_harness, tmp_path: Path, monkeypatch):
    from flows.deepcluster_flow import deepcluster_flow

    folder = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for index in range(42):  # 14 images a class; the store lists cats 0-13, dogs 14-27, owls 28-41
        directory = folder / ("cats", "dogs", "owls")[index % 3]
        directory.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(directory / f"{index:03d}.png")
    config = tiny_config(dataset=str(folder), limit=None, num_clusters=4, batch_size=16, epochs=1)
    deepcluster_flow(config=config, run_id="folder", runs_dir=str(tmp_path / "runs"), progress=False)
    monkeypatch.setattr(store.StoredImages, "load_inputs", lambda self: pytest.fail("the store was read whole"))
    monkeypatch.setattr(decode, "decode_chunk", lambda *args: pytest.fail("the run's folder was decoded again"))
    reads, read = [], loader.FileRows.read
    monkeypatch.setattr(loader.FileRows, "read", lambda self: reads.append(len(self)) or read(self))
    out = tmp_path / "predicted.parquet"
    args = ["--runs-dir", str(tmp_path / "runs"), "predict", "folder", str(folder), "--classes", "0,2", "--limit", "20"]
    assert main([*args, "--out", str(out)]) == 0
    predicted = pq.read_table(out).to_pandas()
    keep = [*range(14), *range(28, 34)]  # cats, then the first owls
    assignments = artifacts.read_clusters(tmp_path / "runs" / "folder" / "epochs" / "0000" / "assignments.parquet")
    assert predicted["cluster"].tolist() == assignments[keep].tolist()
    assert predicted["label"].tolist() == [0] * 14 + [2] * 6
    assert predicted["path"].tolist()[13:15] == ["cats/039.png", "owls/002.png"]
    assert sum(reads) == 20 and max(reads) <= 16  # read a batch at a time
    monkeypatch.undo()
    other = tmp_path / "other"  # another folder, of another size: decoded at the run's input size
    other.mkdir()
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8)).save(other / f"{index}.png")
    args = ["--runs-dir", str(tmp_path / "runs"), "predict", "folder", str(other), "--out", str(tmp_path / "o.parquet")]
    assert main(args) == 0
    assert pq.read_table(tmp_path / "o.parquet").column("path").to_pylist() == ["0.png", "1.png", "2.png"]
