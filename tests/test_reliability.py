"""Runs that cannot be turned against the user: checked before use, never written into, never committed diverged."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepcluster import artifacts
from deepcluster.artifacts import RunLayout
from deepcluster.cli import main
from deepcluster.errors import RunError
from deepcluster.stopping import children
from tests.helpers import CLI_ARGS, ROOT, write_images


def copied_run(finished_run: Path, tmp_path: Path) -> RunLayout:
    shutil.copytree(finished_run / "tiny", tmp_path / "tiny")
    return RunLayout(tmp_path, "tiny")


def flip_byte(path: Path, offset: int = -100) -> None:
    payload = bytearray(path.read_bytes())
    payload[offset] ^= 0xFF
    path.write_bytes(bytes(payload))


def test_resume_refuses_altered_inputs_and_writes_nothing(finished_run: Path, tmp_path: Path, capsys):
    layout = copied_run(finished_run, tmp_path)
    flip_byte(layout.inputs)
    assert main(["--runs-dir", str(tmp_path), "resume", "tiny", "--epochs", "3", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "run 'tiny' was altered or damaged" in error and "inputs.npy: content differs from the manifest" in error
    assert layout.completed_epochs() == [0, 1] and not list(layout.staging.glob("*"))


@pytest.mark.parametrize(
    "command",
    [
        ["inspect", "tiny"],
        ["evaluate", "tiny"],
        ["report", "tiny"],
        ["group", "tiny", "--groups", "3"],
        ["compare", "tiny", "other"],
        ["predict", "tiny", "IMAGES"],
    ],
)
def test_commands_refuse_an_altered_epoch(finished_run: Path, tmp_path: Path, capsys, command: list[str]):
    layout = copied_run(finished_run, tmp_path)
    shutil.copytree(finished_run / "tiny", tmp_path / "other")
    write_images(tmp_path / "images", 28, "L")
    flip_byte(layout.epoch_dir(0) / "assignments.parquet")
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    command = [str(tmp_path / "images") if part == "IMAGES" else part for part in command]
    assert (
        main(
            [
                "--runs-dir",
                str(tmp_path),
                *command,
                *(["--out", str(tmp_path / "p.parquet")] * (command[0] == "predict")),
            ]
        )
        == 2
    )
    assert "0000/assignments.parquet: content differs from the manifest" in capsys.readouterr().err
    assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*")) == before


def test_a_deleted_centroids_file_is_named_as_missing(finished_run: Path, tmp_path: Path, capsys):
    layout = copied_run(finished_run, tmp_path)
    (layout.epoch_dir(1) / artifacts.CENTROIDS).unlink()
    write_images(tmp_path / "images", 28, "L")
    assert main(["--runs-dir", str(tmp_path), "predict", "tiny", str(tmp_path / "images")]) == 2
    error = capsys.readouterr().err
    assert "0001/centroids.npy: missing" in error and "written before epochs kept their centroids" not in error


def test_verify_finds_a_gap_and_epochs_that_are_not_a_directory(finished_run: Path, tmp_path: Path, capsys):
    layout = copied_run(finished_run, tmp_path)
    shutil.rmtree(layout.epoch_dir(0))
    assert main(["--runs-dir", str(tmp_path), "verify", "tiny"]) == 1
    assert "epochs 0 missing before epoch 1" in capsys.readouterr().out
    assert main(["--runs-dir", str(tmp_path), "report", "tiny"]) == 2
    assert "epochs 0 missing before epoch 1" in capsys.readouterr().err
    shutil.rmtree(layout.epochs_dir)
    layout.epochs_dir.write_text("")
    assert main(["--runs-dir", str(tmp_path), "verify", "tiny"]) == 1
    assert "epochs: not a directory" in capsys.readouterr().out


def test_predict_never_writes_into_a_run_nor_over_a_file_unless_asked(finished_run: Path, tmp_path: Path, capsys):
    layout = copied_run(finished_run, tmp_path)
    write_images(tmp_path / "images", 28, "L")
    base = ["--runs-dir", str(tmp_path), "predict", "tiny", str(tmp_path / "images"), "--out"]
    committed = layout.epoch_dir(1) / "assignments.parquet"
    before = committed.read_bytes()
    assert main([*base, str(committed), "--overwrite"]) == 2
    assert "holds a run's committed files" in capsys.readouterr().err
    assert committed.read_bytes() == before and artifacts.verify_run(layout)["epoch 1"] == []
    assert main([*base, str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    out = tmp_path / "p.parquet"
    out.write_text("mine")
    assert main([*base, str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "mine"
    assert main([*base, str(out), "--overwrite"]) == 0
    assert out.read_bytes()[:4] == b"PAR1"


def test_a_diverged_epoch_is_not_committed_and_the_run_goes_on_with_a_lower_rate(
    prefect_harness, tmp_path: Path, capsys
):
    base = ["--runs-dir", str(tmp_path)]
    args = ["run", "--limit", "300", "--k", "5", "--epochs", "2", "--min-epoch-samples", "0", "--no-progress"]
    assert main([*base, *args, "--lr", "1e30", "--run-id", "wild"]) == 2
    error = capsys.readouterr().err
    assert "run 'wild': epoch 0 diverged: its" in error and "not finite" in error
    assert "`deepcluster resume wild --lr 1e+29`" in error
    layout = RunLayout(tmp_path, "wild")
    assert layout.completed_epochs() == [] and not (layout.root / "report").exists()
    assert main([*base, "resume", "wild", "--lr", "0.05", "--no-progress"]) == 0
    assert layout.completed_epochs() == [0, 1]
    record = artifacts.read_json(layout.run_json)
    assert record["config"]["lr"] == 0.05
    assert record["changes"] == [{"from_epoch": 0, "key": "lr", "from": 1e30, "to": 0.05}]


def test_a_run_on_a_folder_works_after_the_folder_moved(prefect_harness, tmp_path: Path, capsys):
    folder = tmp_path / "photos"
    write_images(folder, 28, "L", count=32)
    base = ["--runs-dir", str(tmp_path / "runs")]
    common = ["--k", "3", "--min-epoch-samples", "0", "--no-progress"]
    assert main([*base, "run", "--dataset", str(folder), "--epochs", "1", *common, "--run-id", "f"]) == 0
    folder.rename(tmp_path / "elsewhere")
    assert main([*base, "resume", "f", "--epochs", "2", "--no-progress"]) == 0
    assert RunLayout(tmp_path / "runs", "f").completed_epochs() == [0, 1]
    assert main([*base, "report", "f"]) == 0
    out = tmp_path / "p.parquet"
    assert main([*base, "predict", "f", str(tmp_path / "elsewhere"), "--out", str(out), "--no-progress"]) == 0
    assert main([*base, "verify", "f"]) == 0
    capsys.readouterr()


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on its own 1 MB tmpfs (`mount -o remount,size=...` resizes it); skipped where mounting is not
    permitted (it needs root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk))
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_at_the_start_leaves_nothing_and_says_so(prefect_harness, small_disk: Path, capsys):
    args = ["--runs-dir", str(small_disk), "run", "--limit", "300", "--epochs", "1", "--k", "5", "--run-id", "full"]
    assert main([*args, "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert "deepcluster: error: cannot use" in error and "No space left on device" in error
    assert "Traceback" not in error and error.count("deepcluster: error") == 1
    assert list(small_disk.iterdir()) == []  # no run directory, no temporary file, no lock file


def test_a_full_disk_mid_run_commits_whole_epochs_and_resumes_exactly(finished_run: Path, small_disk: Path, capsys):
    mount("-o", "remount,size=20m", str(small_disk))  # the data and one epoch fit, not two
    args = ["--runs-dir", str(small_disk), "run", "--limit", "300", "--epochs", "2", "--k", "10", "--seed", "7"]
    args += ["--min-epoch-samples", "0", "--batch-size", "64", "--device", "cpu", "--run-id", "tiny", "--no-progress"]
    assert main(args) == 1
    assert "No space left on device" in capsys.readouterr().err
    layout = RunLayout(small_disk, "tiny")
    assert layout.completed_epochs() == [0] and artifacts.verify_run(layout)["epoch 0"] == []
    mount("-o", "remount,size=64m", str(small_disk))
    assert main(args) == 0
    straight = RunLayout(finished_run, "tiny")
    for epoch in (0, 1):
        for name in ("features.parquet", "assignments.parquet", "model.pt"):
            assert (layout.epoch_dir(epoch) / name).read_bytes() == (straight.epoch_dir(epoch) / name).read_bytes()


def test_read_only_storage_gets_one_line_and_reading_still_works(finished_run: Path, tmp_path: Path, capsys):
    shutil.copytree(finished_run / "tiny", tmp_path / "copy" / "tiny")
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    try:
        mount("--bind", str(tmp_path / "copy"), str(frozen))
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot bind-mount here: {error}")
    try:
        mount("-o", "remount,ro,bind", str(frozen))
        base = ["--runs-dir", str(frozen)]
        assert main([*base, "verify", "tiny"]) == 0
        assert main([*base, "inspect", "tiny"]) == 0
        capsys.readouterr()
        assert main([*base, "resume", "tiny", "--epochs", "3", "--no-progress"]) == 1
        error = capsys.readouterr().err
        assert "Read-only file system" in error and "Traceback" not in error
        assert main([*base, "evaluate", "tiny"]) == 1
        assert "Read-only file system" in capsys.readouterr().err
    finally:
        subprocess.run(["umount", "-l", str(frozen)], check=False)


def test_a_runs_directory_that_is_a_file_and_a_damaged_checkpoint(finished_run: Path, tmp_path: Path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["--runs-dir", str(tmp_path / "file"), "run", "--run-id", "x", "--no-progress"]) == 2
    assert "the runs directory" in capsys.readouterr().err
    layout = copied_run(finished_run, tmp_path)
    model = layout.epoch_dir(1) / "model.pt"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(RunError, match="model.pt cannot be read as weights"):
        artifacts.load_checkpoint(model)
    metrics = layout.epoch_dir(1) / "metrics.json"
    metrics.write_text("{")
    with pytest.raises(RunError, match="metrics.json is not valid JSON"):
        artifacts.read_json(metrics)


@pytest.mark.slow  # runs the command in a child process, with its own Prefect server
@pytest.mark.parametrize(
    ("number", "to_group"), [(signal.SIGINT, True), (signal.SIGTERM, True), (signal.SIGTERM, False)]
)
def test_ctrl_c_and_sigterm_stop_at_once_and_cleanly(tmp_path: Path, number: signal.Signals, to_group: bool):
    """Ctrl-C in a terminal signals the whole process group (the temporary Prefect server too)."""
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}  # its own temporary server
    command = [sys.executable, "-m", "deepcluster.cli", "--runs-dir", str(tmp_path), *CLI_ARGS, "--run-id", "stop"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, start_new_session=True)
    layout = RunLayout(tmp_path, "stop")
    deadline = time.monotonic() + 180
    while not layout.epoch_dir(0).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()
    server = children(process.pid)
    assert server, "the command runs its own temporary Prefect server"
    quiet = {b"PREFECT_SERVER_LOGGING_LEVEL=CRITICAL", b"PREFECT_LOGGING_ROOT_LEVEL=CRITICAL"}  # no tracebacks of
    # the writes a signal cancels in it
    assert any(quiet <= set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")) for pid in server)
    if to_group:
        os.killpg(process.pid, number)
    else:
        process.send_signal(number)
    assert process.wait(timeout=60) == 128 + number  # no hang waiting on a server that is gone
    error = process.stderr.read().decode()
    assert f"stopped by {number.name}; run stop keeps its finished epochs" in error, error
    assert "`deepcluster resume stop`" in error and "Traceback" not in error
    assert not layout.lock_file.exists()
    assert all(problems == [] for problems in artifacts.verify_run(layout).values())
    assert layout.completed_epochs() and not any(Path(f"/proc/{pid}").exists() for pid in server)


@pytest.mark.slow  # two child processes that import Prefect
def test_the_temporary_server_logs_no_library_errors_and_the_command_still_does():
    """What a signal cancels in the temporary server, its database pool logs as an error with a traceback; the
    server inherits the command's environment once the flow is loaded, and the command's own logging is set."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_LOGGING_")}
    command = (
        "import logging, os, sys; from flows import load_flow; load_flow(); "
        "logging.getLogger('a.library').warning('the command shows this'); "
        "sys.stdout.write(os.environ['PREFECT_LOGGING_ROOT_LEVEL'])"
    )
    shown = subprocess.run([sys.executable, "-c", command], cwd=ROOT, env=env, capture_output=True, check=True)
    assert "the command shows this" in shown.stderr.decode()
    server = {**env, "PREFECT_LOGGING_ROOT_LEVEL": shown.stdout.decode()}
    command = "import logging, prefect.main; logging.getLogger('sqlalchemy.pool').error('Exception during reset')"
    quiet = subprocess.run([sys.executable, "-c", command], cwd=ROOT, env=server, capture_output=True, check=True)
    assert "Exception during reset" not in quiet.stderr.decode()


@pytest.mark.slow  # child processes that import Prefect
def test_a_run_waits_longer_for_the_temporary_server_unless_the_user_says_otherwise():
    """Prefect waits 20 s for its temporary server; a run waits SERVER_STARTUP_TIMEOUT_S, and a user's own
    setting stands."""
    from flows import SERVER_STARTUP_TIMEOUT_S

    name = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    command = (
        "import sys; from flows import load_flow; load_flow(); "
        f"from prefect.settings import {name}; sys.stdout.write(str({name}.value()))"
    )
    env = {key: value for key, value in os.environ.items() if key != name}
    for given, expected in ((None, SERVER_STARTUP_TIMEOUT_S), ("45", 45)):
        child_env = env if given is None else {**env, name: given}
        shown = subprocess.run(
            [sys.executable, "-c", command], cwd=ROOT, env=child_env, capture_output=True, check=True
        )
        assert shown.stdout.decode() == str(expected)


def test_damage_to_any_file_of_a_run_is_named_by_the_command_that_reads_it(finished_run: Path, tmp_path: Path, capsys):
    """Every file of a finished run, each damaged once (a flipped byte or a truncation), then read by a command
    drawn at random: it stops with a message naming the file. Bounded in count (the run's files) and time."""
    rng = random.Random(13)
    source = finished_run / "tiny"
    files = sorted(
        path.relative_to(source) for path in source.rglob("*") if path.is_file() and "report" not in path.parts
    )
    write_images(tmp_path / "images", 28, "L")
    commands = [
        ["verify"],
        ["inspect"],
        ["evaluate"],
        ["report", "--out", str(tmp_path / "report")],
        ["group", "--groups", "3"],
        ["predict", str(tmp_path / "images"), "--out", str(tmp_path / "p.parquet"), "--overwrite"],
        ["resume", "--epochs", "3", "--no-progress"],
    ]
    deadline = time.monotonic() + 300
    for index, name in enumerate(files):
        if time.monotonic() > deadline:
            break
        runs_dir = tmp_path / f"runs{index}"
        shutil.copytree(source, runs_dir / "tiny", ignore=shutil.ignore_patterns("report"))
        path = runs_dir / "tiny" / name
        payload = path.read_bytes()
        damage = rng.choice(["flip", "truncate"])
        if damage == "flip":
            flip_byte(path, len(payload) // 2)
        else:
            path.write_bytes(payload[: len(payload) // 2])
        command = rng.choice(commands)
        code = main(["--runs-dir", str(runs_dir), command[0], "tiny", *command[1:]])
        out, error = capsys.readouterr()
        assert code in (1, 2), (name, damage, command, out, error)
        assert str(name) in out + error, (name, damage, command, out, error)
        shutil.rmtree(runs_dir)
