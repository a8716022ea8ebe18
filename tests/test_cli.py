"""The `deepcluster` command on a finished run, and its errors."""

import json
import shutil
from pathlib import Path

import pytest

from deepcluster.cli import main


def test_runs_lists_the_run(finished_run: Path, capsys):
    assert main(["--runs-dir", str(finished_run), "runs"]) == 0
    output = capsys.readouterr().out
    assert "tiny" in output and "2/2" in output and "fashion-mnist-sample" in output


def test_shared_options_go_before_or_after_the_command(finished_run: Path, tmp_path: Path, capsys):
    assert main(["runs", "--runs-dir", str(finished_run)]) == 0
    assert "tiny" in capsys.readouterr().out
    assert main(["--runs-dir", str(tmp_path), "inspect", "tiny", "--runs-dir", str(finished_run)]) == 0  # the later
    assert main(["inspect", "tiny", "--runs-dir", str(tmp_path), "--verbose"]) == 2
    assert "no run 'tiny'" in capsys.readouterr().err


def test_any_error_raised_on_purpose_is_one_line(monkeypatch, capsys):
    """Errors of the library (here, k-means asked for more clusters than points) print as one line, exit 2."""
    from deepcluster import cli
    from deepcluster.errors import InputError

    def refuse(args):
        raise InputError("k-means with k=5 needs at least as many points, got 3")

    monkeypatch.setitem(cli.COMMANDS, "runs", refuse)
    assert main(["runs"]) == 2
    assert capsys.readouterr().err == "deepcluster: error: k-means with k=5 needs at least as many points, got 3\n"


def test_inspect_table_and_epoch_json(finished_run: Path, capsys):
    assert main(["--runs-dir", str(finished_run), "inspect", "tiny"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["epoch", "train_loss", "kmeans_loss"] and len(table) == 3
    assert main(["--runs-dir", str(finished_run), "inspect", "tiny", "--epoch", "1", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["epoch"] == 1 and sum(metrics["cluster_size_list"]) == 300


def test_inspect_unfinished_epoch_and_missing_run(finished_run: Path, capsys):
    assert main(["--runs-dir", str(finished_run), "inspect", "tiny", "--epoch", "5"]) == 2
    assert "epoch 5 of run 'tiny' is not finished (finished: 0-1)" in capsys.readouterr().err
    assert main(["--runs-dir", str(finished_run), "inspect", "ghost"]) == 2
    assert "no run 'ghost'" in capsys.readouterr().err


def test_verify_passes_then_names_the_altered_file(finished_run: Path, tmp_path: Path, capsys):
    shutil.copytree(finished_run / "tiny", tmp_path / "tiny")
    assert main(["--runs-dir", str(tmp_path), "verify", "tiny"]) == 0
    assert "all files match" in capsys.readouterr().out
    metrics = tmp_path / "tiny" / "epochs" / "0001" / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"epoch": 1', '"epoch": 9'))
    assert main(["--runs-dir", str(tmp_path), "verify", "tiny"]) == 1
    assert "0001/metrics.json: content differs from the manifest" in capsys.readouterr().out


def test_run_rejects_bad_input_before_writing(tmp_path: Path, capsys):
    runs_dir = tmp_path / "runs"
    assert main(["--runs-dir", str(runs_dir), "run", "--dataset", "nope", "--run-id", "x"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    assert main(["--runs-dir", str(runs_dir), "run", "--epochs", "0", "--run-id", "x"]) == 2
    assert "epochs" in capsys.readouterr().err
    assert main(["--runs-dir", str(runs_dir), "run", "--run-id", "../escape"]) == 2
    assert "run id '../escape' is invalid" in capsys.readouterr().err
    assert not runs_dir.exists()


def test_run_with_k_above_the_image_count_writes_no_run(prefect_harness, tmp_path: Path, capsys):
    args = ["--runs-dir", str(tmp_path), "run", "--limit", "20", "--k", "21", "--run-id", "toobig", "--no-progress"]
    assert main(args) == 2
    assert "k=21 is larger than the number of images (20)" in capsys.readouterr().err
    assert not (tmp_path / "toobig").exists()


def test_resume_continues_a_run(finished_run: Path, tmp_path: Path, capsys):
    shutil.copytree(finished_run / "tiny", tmp_path / "tiny")
    assert main(["--runs-dir", str(tmp_path), "resume", "tiny", "--epochs", "3", "--no-progress"]) == 0
    output = capsys.readouterr().out
    assert "run tiny: 3 epochs" in output


def test_run_then_evaluate_in_one_command(prefect_harness, tmp_path: Path, capsys):
    args = [
        "--runs-dir",
        str(tmp_path),
        "run",
        "--limit",
        "200",
        "--k",
        "5",
        "--epochs",
        "1",
        "--min-epoch-samples",
        "0",
    ]
    args.append("--evaluate")
    assert main([*args, "--run-id", "ev", "--no-progress"]) == 0
    output = capsys.readouterr().out
    assert "run ev: 1 epochs" in output and "epoch 0, clustered (128-d)" in output and "baseline: pixels" in output
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text())["epochs"]["0"]["epoch"] == 0
    assert "Epoch 0:" in (tmp_path / "ev" / "report" / "index.html").read_text()  # the report shows the evaluation


def test_every_config_key_is_a_run_flag_with_its_description():
    from deepcluster.cli import build_parser
    from deepcluster.config import Config

    (commands,) = [action for action in build_parser()._actions if action.dest == "command"]
    flags = {action.dest: action for action in commands.choices["run"]._actions}
    for key, field in Config.model_fields.items():
        assert flags[key].help == field.description, key
    assert flags["num_clusters"].option_strings == ["--k"] and flags["pca_dim"].option_strings == ["--pca-dim"]


def test_crop_ranges_read_numbers_or_fractions(capsys):
    from deepcluster.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["run", "--crop-ratio", "3/4,4/3", "--crop-scale", "0.3,1"])
    assert args.crop_ratio == [3 / 4, 4 / 3] and args.crop_scale == [0.3, 1.0]
    for bad in ("1/0,2", "0.5", "a,b"):
        with pytest.raises(SystemExit):
            parser.parse_args(["run", "--crop-ratio", bad])
        assert f"--crop-ratio expects two numbers like 0.3,1 or 3/4,4/3, got {bad!r}" in capsys.readouterr().err, bad
