import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepcluster import artifacts
from deepcluster.artifacts import RunLayout, RunLock
from deepcluster.errors import RunError, RunLockedError


def test_features_parquet_schema_and_roundtrip(tmp_path: Path):
    features = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    artifacts.write_features(tmp_path / "f.parquet", features)
    schema = pq.read_schema(tmp_path / "f.parquet")
    assert schema.field("index").type == pa.int64()
    assert schema.field("features").type == pa.list_(pa.float32(), 3)
    assert np.array_equal(artifacts.read_features(tmp_path / "f.parquet"), features)


def test_assignments_parquet_schema_with_and_without_labels(tmp_path: Path):
    artifacts.write_assignments(tmp_path / "a.parquet", np.array([2, 0, 1]), np.array([1, 1, 0]))
    artifacts.write_assignments(tmp_path / "b.parquet", np.array([2, 0, 1]), None)
    table = pq.read_table(tmp_path / "a.parquet")
    assert table.schema.field("index").type == pa.int64()
    assert table.schema.field("cluster").type == pa.int32()
    assert table.schema.field("label").type == pa.int32()
    assert table.column("label").to_pylist() == [1, 1, 0]
    assert pq.read_table(tmp_path / "b.parquet").column("label").null_count == 3
    assert artifacts.read_clusters(tmp_path / "b.parquet").tolist() == [2, 0, 1]


def test_manifest_detects_altered_missing_and_extra_files(tmp_path: Path):
    (tmp_path / "a.bin").write_bytes(b"alpha")
    (tmp_path / "b.bin").write_bytes(b"beta")
    artifacts.write_manifest(tmp_path)
    assert artifacts.verify_manifest(tmp_path) == []
    (tmp_path / "a.bin").write_bytes(b"alpHa")
    (tmp_path / "b.bin").unlink()
    (tmp_path / "c.bin").write_bytes(b"new")
    problems = artifacts.verify_manifest(tmp_path)
    assert any("a.bin: content differs" in p for p in problems)
    assert any("b.bin: missing" in p for p in problems)
    assert any("c.bin: not in the manifest" in p for p in problems)


def test_epoch_is_complete_only_after_commit(tmp_path: Path):
    layout = RunLayout(tmp_path, "r1")
    staging = artifacts.begin_epoch(layout, 0)
    (staging / "metrics.json").write_text("{}")
    assert layout.completed_epochs() == []
    artifacts.commit_epoch(layout, 0)
    assert layout.completed_epochs() == [0]
    assert artifacts.verify_manifest(layout.epoch_dir(0)) == []
    (artifacts.begin_epoch(layout, 1) / "assignments.parquet").write_text("")
    seen = sorted(str(path.relative_to(layout.root)) for path in layout.root.glob("epochs/*/*"))
    assert seen == ["epochs/0000/manifest.json", "epochs/0000/metrics.json"]  # a reader's glob: committed only
    (layout.epochs_dir / ".0002.partial").mkdir()  # as older versions staged an epoch
    assert [path.name for path in layout.discard_partial_epochs()] == ["0001", ".0002.partial"]
    assert layout.completed_epochs() == [0] and not list(layout.staging.iterdir())


@pytest.mark.parametrize("run_id", ["", "a/b", "..", "x y", "é", "nl\n"])
def test_invalid_run_ids(tmp_path: Path, run_id: str):
    with pytest.raises(RunError, match="run id"):
        RunLayout(tmp_path, run_id)


def test_second_lock_is_refused(tmp_path: Path):
    layout = RunLayout(tmp_path, "locked")
    with RunLock(layout):
        with pytest.raises(RunLockedError, match=rf"being written by another process \(pid {os.getpid()}\)"):
            with RunLock(layout):
                pass
    assert not layout.lock_file.exists()  # removed on release
    with RunLock(layout):  # released on exit
        pass


@pytest.mark.parametrize("planted", ["symlink", "hardlink", "directory"])
def test_a_planted_lock_file_is_refused_and_its_target_untouched(tmp_path: Path, planted: str):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    layout = RunLayout(tmp_path / "runs", "victim")
    layout.runs_dir.mkdir()
    if planted == "symlink":
        layout.lock_file.symlink_to(victim)
    elif planted == "hardlink":
        layout.lock_file.hardlink_to(victim)
    else:
        layout.lock_file.mkdir()
    with pytest.raises(RunError, match="lock file"), RunLock(layout):
        pass
    assert victim.read_text() == "precious"
    with pytest.raises(RunError, match="symbolic link"):
        (tmp_path / "dangling.lock").symlink_to(tmp_path / "nowhere")
        artifacts.lock_file(tmp_path / "dangling.lock")
    assert not (tmp_path / "nowhere").exists()


def test_atomic_writes_never_write_through_a_planted_file(tmp_path: Path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / ".out.json.tmp").symlink_to(victim)
    artifacts.write_json(tmp_path / "out.json", {"a": 1})
    assert victim.read_text() == "precious"
    assert artifacts.read_json(tmp_path / "out.json") == {"a": 1}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.json", "victim.txt"]


def test_find_run_names_where_it_looked(tmp_path: Path):
    with pytest.raises(RunError, match=f"no run 'nope' in {tmp_path}"):
        artifacts.find_run("nope", tmp_path)


def test_writer_runs_jobs_in_order_off_the_calling_thread():
    import threading

    done: list[tuple[int, str]] = []

    def job(epoch: int, name: str) -> None:
        time.sleep(0.05)
        done.append((epoch, name, threading.current_thread().name))

    with artifacts.ArtifactWriter() as writer:
        for epoch in (0, 1):
            for name in ("features", "commit"):
                writer.submit(epoch, job, epoch, name)
        writer.flush()
    assert [(epoch, name) for epoch, name, _ in done] == [
        (0, "features"),
        (0, "commit"),
        (1, "features"),
        (1, "commit"),
    ]
    assert all(thread != threading.current_thread().name for _, _, thread in done)
    assert writer.busy_seconds(0) >= 0.1 and writer.busy_seconds(7) == 0  # epoch 0: two jobs of 0.05 s


def test_writer_runs_nothing_after_a_failed_job_and_reports_it():
    import threading

    ran: list[str] = []
    both_queued = threading.Event()

    def fail() -> None:
        both_queued.wait()
        raise OSError("disk full")

    with artifacts.ArtifactWriter() as writer:
        writer.submit(0, fail)
        writer.submit(0, ran.append, "commit")  # must not commit an epoch with a missing file
        both_queued.set()
        with pytest.raises(OSError, match="disk full"):
            writer.flush()
    assert ran == []


def test_leaving_the_writer_waits_for_queued_jobs():
    import time

    ran: list[int] = []
    with pytest.raises(KeyError):
        with artifacts.ArtifactWriter() as writer:
            writer.submit(0, lambda: (time.sleep(0.2), ran.append(0)))
            raise KeyError("a later stage failed")
    assert ran == [0]
