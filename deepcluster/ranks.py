"""A run's epochs trained by several processes (ranks) together, through torch.distributed.

`train_on_ranks` starts them with torchrun (`python -m torch.distributed.run`), each rank running this module,
and follows the run's epochs as the writer (rank 0) commits them. Each rank works as `distributed` describes;
the writer writes and commits every epoch exactly as a single process does, so a run continues from its last
committed epoch on any number of ranks, and the run's files are the same either way.

The run must exist first (ingested, preprocessed, checked: the flow does it), and every machine must see its
directory (a shared file system; each machine may mount it at its own path). Every rank reads the config from
run.json, which holds the config the run goes on with. Other machines join with `deepcluster join` (nnodes > 1).
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from deepcluster import artifacts, distributed, runs
from deepcluster.artifacts import ArtifactWriter, RunLayout
from deepcluster.config import Config, recorded_config
from deepcluster.epoch import run_epoch
from deepcluster.errors import DeepClusterError, RunError
from deepcluster.runtime import configure_torch, cpu_count, resolve_device

POLL_SECONDS = 0.5  # how often the launcher looks for newly committed epochs
OUTPUT_LINES = 40  # the ranks' last lines of output kept for the error message of a failed run


def launch_command(layout: RunLayout, config: Config, node_rank: int = 0) -> list[str]:
    """The torchrun command that starts this machine's ranks on the run: a standalone group on one machine, or
    node `node_rank` of nnodes meeting at master_addr:master_port."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(config.nproc_per_node)]
    if config.nnodes == 1:
        command.append("--standalone")
    else:
        command += ["--nnodes", str(config.nnodes), "--node-rank", str(node_rank)]
        command += ["--master-addr", config.master_addr, "--master-port", str(config.master_port)]
    return [*command, "-m", "deepcluster.ranks", str(layout.root.resolve())]


def train_on_ranks(
    layout: RunLayout,
    config: Config,
    on_epoch: Callable[[dict[str, Any]], None],
    on_output: Callable[[str], None] | None = None,
) -> None:
    """Train the run's remaining epochs (to config.epochs) on config.ranks ranks; this machine starts
    config.nproc_per_node of them. on_epoch(metrics) is called for each epoch as it is committed, in order;
    on_output(line) for each line the ranks print. A failed rank fails the run with a RunError that quotes the
    ranks' last lines; an interrupted launcher (Ctrl-C, SIGTERM) stops the ranks before it returns."""
    first = len(layout.completed_epochs())
    last_lines: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
    with _started(launch_command(layout, config), last_lines, on_output) as process:
        for epoch in _committed(layout, first, config.epochs, process):
            on_epoch(artifacts.read_json(layout.metrics(epoch)))
        process.wait()
    if process.returncode != 0:
        output = "\n".join(last_lines)
        raise RunError(
            f"the {config.ranks} ranks training run {layout.run_id!r} failed (torchrun exit code "
            f"{process.returncode}); its committed epochs are kept, and running it again continues it. "
            f"The ranks' last output:\n{output}"
        )


@contextmanager
def _started(
    command: list[str], last_lines: collections.deque[str], on_output: Callable[[str], None] | None
) -> Iterator[subprocess.Popen[str]]:
    """The command running, its output (stdout and stderr) read line by line in a thread; stopped on the way out
    if it still runs (SIGTERM, which torchrun passes on to the ranks, then SIGKILL)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            last_lines.append(line.rstrip("\n"))
            if on_output:
                on_output(line.rstrip("\n"))

    reader = threading.Thread(target=read, name="deepcluster-ranks-output", daemon=True)
    reader.start()
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait()
        reader.join(timeout=5)


def join(layout: RunLayout, node_rank: int) -> int:
    """Start this machine's ranks of a run that trains on several machines (node `node_rank`), and wait for them.
    The machine of node 0 starts the run (`deepcluster run ... --nnodes N`); returns torchrun's exit code."""
    config = recorded_config(artifacts.read_run_record(layout)["config"])
    if config.nnodes == 1:
        raise RunError(
            f"run {layout.run_id!r} trains on one machine (nnodes=1): start it on its first machine with "
            "--nnodes N, then join it from the others"
        )
    if not 0 < node_rank < config.nnodes:
        raise RunError(f"node rank {node_rank} is not one of 1..{config.nnodes - 1} (run {layout.run_id!r})")
    return subprocess.call(launch_command(layout, config, node_rank))


def _committed(layout: RunLayout, first: int, last: int, process: subprocess.Popen[str]) -> Iterator[int]:
    """Epochs first..last-1 as each is committed, until the process ends (then those committed meanwhile)."""
    epoch = first
    while epoch < last:
        running = process.poll() is None
        while epoch < last and layout.epoch_dir(epoch).is_dir():
            yield epoch
            epoch += 1
        if not running:
            return
        time.sleep(POLL_SECONDS)


def train(layout: RunLayout) -> None:
    """This rank's part of training the run's remaining epochs (the process group is set up by torchrun)."""
    config = recorded_config(artifacts.read_run_record(layout)["config"])
    device = distributed.rank_device(resolve_device(config.device))
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RunError(
            f"nproc_per_node={config.nproc_per_node} ranks on cuda need as many GPUs; this machine has "
            f"{torch.cuda.device_count()}"
        )
    configure_torch(config)
    torch.set_num_threads(max(1, cpu_count() // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    distributed.start(device)
    try:
        first = len(layout.completed_epochs())
        session = runs.open_session(layout, config, first, device)
        with ArtifactWriter() as writer:
            outputs = runs.RunOutputs(layout, writer, session.labels) if distributed.is_writer() else None
            for epoch in range(first, config.epochs):
                run_epoch(session, epoch, progress=False, outputs=outputs)
            writer.flush()
        distributed.barrier()
    finally:
        distributed.stop()


def main(argv: list[str] | None = None) -> int:
    """A rank's entry point (torchrun runs `python -m deepcluster.ranks RUN_DIR`)."""
    parser = argparse.ArgumentParser(prog="python -m deepcluster.ranks", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the run's directory (as this machine sees it)")
    args = parser.parse_args(argv)
    run_dir = args.run_dir
    try:
        layout = RunLayout(run_dir.parent, run_dir.name)
        if not layout.run_json.is_file():
            raise RunError(f"{run_dir} is not a run (no run.json): a run is created before its ranks start")
        train(layout)
    except DeepClusterError as error:
        print(f"error (rank {os.environ.get('RANK', '0')}): {error}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
