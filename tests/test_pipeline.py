"""The stage functions over a run directory (no Prefect)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepcluster import pipeline
from deepcluster.artifacts import RunError, RunLayout
from deepcluster.config import ConfigError
from tests.conftest import tiny_config


def test_bad_input_is_refused_before_anything_is_written(tmp_path: Path):
    layout = RunLayout(tmp_path, "bad")
    for config, message in [
        (tiny_config(num_clusters=301), "k=301 is larger than the number of images"),
        (tiny_config(pca_dim=512), "pca_dim=512"),
        (tiny_config(arch="alexnet", image_size=32), "alexnet needs images of at least 63"),
    ]:
        with pytest.raises(ConfigError, match=message):
            pipeline.ingest(config, layout)
    with pytest.raises(FileNotFoundError, match="missing"):
        pipeline.ingest(tiny_config(dataset="fashion-mnist", data_dir=tmp_path / "missing"), layout)
    assert not layout.root.exists()


def test_existing_run_refuses_a_changed_config_naming_the_keys(tmp_path: Path):
    layout = RunLayout(tmp_path, "r")
    pipeline.ingest(tiny_config(), layout)
    with pytest.raises(RunError, match=r"different config \(num_clusters: 10 -> 12, seed: 7 -> 8\)"):
        pipeline.ingest(tiny_config(num_clusters=12, seed=8), layout)
    pipeline.ingest(tiny_config(epochs=5), layout)  # more epochs extend the run


def test_existing_run_refuses_changed_data(tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):
        Image.fromarray(np.full((10, 10), i * 20, np.uint8)).save(images / f"{i}.png")
    config = tiny_config(dataset=str(images), limit=None, num_clusters=3, pca_dim=4)
    layout = RunLayout(tmp_path / "runs", "folder")
    pipeline.ingest(config, layout)
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(images / "0.png")
    with pytest.raises(RunError, match="was trained on different data"):
        pipeline.ingest(config, layout)


def test_one_epoch_of_stages_writes_the_contract(tmp_path: Path):
    layout = RunLayout(tmp_path, "stages")
    config = tiny_config()
    device = pipeline.resolve_device("cpu")
    info = pipeline.ingest(config, layout)
    assert (info.num_images, info.image_size, info.has_labels) == (300, 28, True)
    pipeline.sobel_preprocess(layout, info.image_size)
    raw = pipeline.extract(layout, config, 0, device, progress=False)
    features = pipeline.reduce(raw, config.pca_dim, device)
    assignments, loss = pipeline.cluster(features, layout, config, 0, device)
    sample = pipeline.resample(assignments, config, 0)
    result = pipeline.retrain(layout, config, 0, assignments, sample, device, progress=False)
    evaluation = pipeline.evaluate(layout, 0, assignments, config.num_clusters)
    assert loss > 0 and result.loss > 0 and result.batches == 5
    assert evaluation["nmi_previous"] is None and 0 <= evaluation["labels"]["nmi"] <= 1
    assert evaluation["cluster_sizes"]["empty"] == 0
    final = pipeline.finish_epoch(layout, 0, {"epoch": 0})
    assert sorted(path.name for path in final.iterdir()) == [
        "assignments.parquet",
        "features.parquet",
        "manifest.json",
        "metrics.json",
        "model.pt",
    ]


def test_cuda_requested_without_gpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        pipeline.resolve_device("cuda")
    assert str(pipeline.resolve_device("auto")) == "cpu"
