"""The input store: a folder decoded once, in chunks, into one array on disk shared by its runs."""

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deepcluster import artifacts, decode, runs, store
from deepcluster.artifacts import RunLayout
from deepcluster.errors import ConfigError, DatasetError
from deepcluster.sobel import grayscale, prepare_inputs
from tests.helpers import tiny_config


def photos(folder: Path, sizes: list[tuple[int, int]], classes: tuple[str, ...] = ("cats", "dogs")) -> None:
    """Colour images of the given (height, width), spread over one sub-folder per class."""
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate(sizes):
        directory = folder / classes[index % len(classes)]
        directory.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(directory / f"{index:03d}.png")


def test_a_folder_of_mixed_sizes_becomes_one_array_with_labels_files_and_a_report(tmp_path: Path):
    folder = tmp_path / "photos"
    photos(folder, [(20, 30), (30, 20), (16, 16), (40, 40), (24, 50)])
    (folder / "dogs" / "broken.png").write_bytes(b"not an image")
    stored = store.ingest_folder(folder, 16, 8, tmp_path / "store")
    inputs = stored.load_inputs()
    assert inputs.shape == (5, 1, 16, 16) and inputs.dtype == np.uint8 and isinstance(inputs, np.memmap)
    assert stored.load_labels().tolist() == [0, 0, 0, 1, 1]
    files = pq.read_table(stored.files).to_pydict()
    assert files["path"] == ["cats/000.png", "cats/002.png", "cats/004.png", "dogs/001.png", "dogs/003.png"]
    assert files["index"] == [0, 1, 2, 3, 4] and files["label"] == [0, 0, 0, 1, 1]
    report = artifacts.read_json(stored.root / "unreadable.json")
    assert [entry["path"] for entry in report] == ["dogs/broken.png"] and "Error" in report[0]["error"]
    assert (stored.meta["num_files"], stored.meta["num_unreadable"], stored.meta["class_names"]) == (
        6,
        1,
        ["cats", "dogs"],
    )
    assert not (stored.root / "partial").exists()
    square = np.asarray(Image.open(folder / "cats" / "002.png"))
    assert np.array_equal(inputs[1], prepare_inputs(square.transpose(2, 0, 1)[None], 16)[0])  # as a run's inputs


def test_the_shorter_side_is_resized_then_the_centre_cropped():
    image = np.zeros((10, 30), np.uint8)
    image[:, 10:20] = 255  # the middle third is white
    fitted = decode.fit_image(Image.fromarray(image), 10)
    assert fitted.shape == (1, 10, 10) and (fitted == 255).all()
    assert decode.fit_image(Image.fromarray(image.T.copy()), 5).shape == (1, 5, 5)


@pytest.mark.parametrize("shape", [(37, 53, 3), (9, 20), (16, 40, 3), (300, 200)])
def test_a_resized_image_is_within_one_grey_level_of_torchs_antialiased_resize(shape: tuple[int, ...]):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    pixels = torch.from_numpy(image).float()
    colour = pixels.permute(2, 0, 1)[None] if pixels.ndim == 3 else pixels[None, None]
    scale = 16 / min(shape[:2])
    target = (max(16, round(shape[0] * scale)), max(16, round(shape[1] * scale)))
    resized = F.interpolate(grayscale(colour), size=target, mode="bilinear", antialias=True)
    top, left = (target[0] - 16) // 2, (target[1] - 16) // 2
    reference = resized[0, :, top : top + 16, left : left + 16].round().clamp(0, 255).numpy()
    assert np.abs(decode.fit_image(Image.fromarray(image), 16).astype(np.float32) - reference).max() <= 1


def test_a_second_ingest_reuses_the_store_and_a_changed_folder_gets_a_new_one(tmp_path: Path, monkeypatch):
    folder = tmp_path / "photos"
    photos(folder, [(12, 12)] * 4)
    first = store.ingest_folder(folder, None, 8, tmp_path / "store")
    assert first.image_size == 12  # the images' own size, being above the minimum
    monkeypatch.setattr(decode, "decode_chunk", lambda *args: pytest.fail("decoded again"))
    assert store.ingest_folder(folder, None, 8, tmp_path / "store").root == first.root
    monkeypatch.undo()
    assert store.ingest_folder(folder, None, 28, tmp_path / "store").image_size == 28  # raised to the minimum
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(folder / "cats" / "new.png")
    changed = store.ingest_folder(folder, None, 8, tmp_path / "store")
    assert changed.root != first.root and changed.num_images == 5


def test_a_killed_ingest_continues_where_it_stopped(tmp_path: Path, monkeypatch):
    folder = tmp_path / "photos"
    photos(folder, [(14, 14)] * 11)
    monkeypatch.setattr(store, "CHUNK_FILES", 3)
    decode_chunk, calls = decode.decode_chunk, []

    def dies_on_the_third_chunk(directory: Path, files: list[str], size: int):
        calls.append(files)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill would stop it, after two chunks were written
        return decode_chunk(directory, files, size)

    monkeypatch.setattr(decode, "decode_chunk", dies_on_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        store.ingest_folder(folder, 12, 8, tmp_path / "store", workers=1)
    partial = next((tmp_path / "store").glob("*/partial"))
    assert sorted(path.name for path in partial.glob("0*.json")) == ["00000000.json", "00000001.json"]
    calls.clear()
    resumed = store.ingest_folder(folder, 12, 8, tmp_path / "store", workers=1)
    assert len(calls) == 2  # the two chunks left, not the four
    monkeypatch.undo()
    straight = store.ingest_folder(folder, 12, 8, tmp_path / "other", workers=1)
    assert resumed.fingerprint == straight.fingerprint
    assert np.array_equal(resumed.load_inputs(), straight.load_inputs())


def test_worker_processes_decode_the_same_array(tmp_path: Path, monkeypatch):
    folder = tmp_path / "photos"
    photos(folder, [(18, 24)] * 9)
    monkeypatch.setattr(store, "CHUNK_FILES", 2)
    alone = store.ingest_folder(folder, 16, 8, tmp_path / "one", workers=1)
    pooled = store.ingest_folder(folder, 16, 8, tmp_path / "two", workers=2)
    assert pooled.fingerprint == alone.fingerprint and pooled.num_images == 9


def test_bad_folders_are_refused_before_anything_is_written(tmp_path: Path):
    with pytest.raises(DatasetError, match="does not exist"):
        store.ingest_folder(tmp_path / "nowhere", 16, 8, tmp_path / "store")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="is empty"):
        store.ingest_folder(tmp_path / "empty", 16, 8, tmp_path / "store")
    mixed = tmp_path / "mixed"
    photos(mixed, [(12, 12), (12, 14)])
    with pytest.raises(ConfigError, match="2 different sizes.*set image_size"):
        store.ingest_folder(mixed, None, 8, tmp_path / "store")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="no readable images"):
        store.ingest_folder(junk, None, 8, tmp_path / "store")
    assert [path.name for path in (tmp_path / "store").iterdir() if not path.name.endswith(".lock")] == []


def test_the_store_directory_defaults_to_the_cache_or_the_environment(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("DEEPCLUSTER_STORE_DIR", str(tmp_path))
    assert store.default_store_dir() == tmp_path
    monkeypatch.delenv("DEEPCLUSTER_STORE_DIR")
    assert store.default_store_dir() == Path.home() / ".cache" / "deepcluster" / "store"
    assert os.environ.get("DEEPCLUSTER_STORE_DIR") is None


def test_runs_of_a_folder_share_its_store_and_keep_their_own_link_or_selection(tmp_path: Path, monkeypatch):
    folder = tmp_path / "photos"
    photos(folder, [(30, 40), (40, 30), (32, 32), (50, 36)] * 3)
    # neighbours=3: the selection below holds 4 images
    config = tiny_config(dataset=str(folder), image_size=28, num_clusters=3, neighbours=3, limit=None)
    whole = RunLayout(tmp_path / "runs", "whole")
    info = runs.ingest(config, whole)
    stored = store.StoredImages(Path(artifacts.read_run_record(whole)["dataset"]["store"]), {})
    assert os.stat(whole.inputs).st_ino == os.stat(stored.inputs).st_ino  # a link, not a second copy
    assert (info.num_images, info.image_size, info.has_labels) == (12, 28, True)
    assert not whole.images.is_file() and whole.ingested_images == whole.inputs
    assert pq.read_table(whole.files).column("path").to_pylist()[:2] == ["cats/000.png", "cats/002.png"]
    monkeypatch.setattr(decode, "decode_chunk", lambda *args: pytest.fail("decoded again"))
    part = RunLayout(tmp_path / "runs", "part")
    part_info = runs.ingest(config.model_copy(update={"classes": (1,), "limit": 4}), part)
    assert part_info.num_images == 4 and part_info.fingerprint != info.fingerprint
    dogs = np.flatnonzero(artifacts.load_array(whole.labels) == 1)[:4]
    assert np.array_equal(artifacts.load_array(part.inputs), artifacts.load_array(whole.inputs)[dogs])
    assert pq.read_table(part.files).to_pydict()["index"] == [0, 1, 2, 3]
    assert runs.ingest(config, whole) == info  # an existing run checks its data and goes on
    shutil.rmtree(stored.root)
    folder.rename(tmp_path / "moved")
    assert runs.ingest(config, whole) == info  # the folder has gone: the run goes on with its own inputs
