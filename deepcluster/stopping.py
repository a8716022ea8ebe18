"""Clean stops on Ctrl-C and SIGTERM, for the `deepcluster` command.

A run's files survive a kill at any moment (epochs are committed by one rename), so a stop needs no
unwinding: the handler ends this process's children (the temporary Prefect server, which would
otherwise be orphaned, or which the terminal's Ctrl-C has already stopped, so that waiting on it would
hang), removes the run's lock file, prints how to go on and exits with 128 + the signal's number. The
epoch being computed is lost; the ones finished before are kept.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from deepcluster.artifacts import RunLock

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
CHILD_GRACE_SECONDS = 5.0
_active = False  # inside stop_cleanly


@contextmanager
def stop_cleanly() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM stop the process at once, cleanly (see the module's docstring)."""
    global _active
    previous = {number: signal.signal(number, _stop) for number in STOP_SIGNALS}
    _active = True
    try:
        yield
    finally:
        _active = False
        for number, handler in previous.items():
            signal.signal(number, handler)


def reclaim_signals() -> None:
    """Within stop_cleanly, in the main thread: the clean stop again, where a flow run's engine has put its own
    SIGTERM handler (which reports the crash to the Prefect server first: a hang when a signal to the whole
    process group has already stopped the temporary server). Elsewhere (a flow run by a Prefect worker,
    which cancels runs by SIGTERM) nothing changes."""
    if _active and threading.current_thread() is threading.main_thread():
        for number in STOP_SIGNALS:
            signal.signal(number, _stop)


def _stop(number: int, frame: FrameType | None) -> None:
    for each in STOP_SIGNALS:
        signal.signal(each, signal.SIG_IGN)  # a second Ctrl-C does not interrupt the clean-up
    end_children()
    held = RunLock.held
    advice = ""
    if held is not None:
        held.release()
        run_id = held.layout.run_id
        advice = f"; run {run_id} keeps its finished epochs: continue it with `deepcluster resume {run_id}`"
    print(f"\ndeepcluster: stopped by {signal.Signals(number).name}{advice}", file=sys.stderr, flush=True)
    os._exit(128 + number)


def children(parent: int | None = None) -> list[int]:
    """The pids of the children of `parent` (default: this process), from Linux's /proc (none without it)."""
    parent = os.getpid() if parent is None else parent
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            found.append(int(stat.parent.name))
    return found


def end_children() -> None:
    """SIGTERM to every child, then SIGKILL to those still there after CHILD_GRACE_SECONDS; all reaped."""
    remaining = children()
    for pid in remaining:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + CHILD_GRACE_SECONDS
    while remaining and time.monotonic() < deadline:
        remaining = [pid for pid in remaining if not _reaped(pid)]
        time.sleep(0.05)
    for pid in remaining:
        _signal(pid, signal.SIGKILL)
        _reaped(pid, wait=True)


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


def _reaped(pid: int, wait: bool = False) -> bool:
    try:
        done, _ = os.waitpid(pid, 0 if wait else os.WNOHANG)
    except ChildProcessError:  # not ours to wait for, or already reaped
        return True
    return done == pid
