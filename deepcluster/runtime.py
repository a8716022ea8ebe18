"""Runtime set-up: the device, the precision (bf16 autocast where fast), torch's threads and deterministic
kernels, and timing a stage (the device's queued work included)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import torch

from deepcluster.config import Config
from deepcluster.errors import ConfigError

Result = TypeVar("Result")


def resolve_device(requested: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA GPU is available: set device to 'cpu' or 'auto'")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def configure_torch(config: Config) -> None:
    """Deterministic kernels when asked (exact resume on CPU); intra-op threads = cores."""
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(config.deterministic, warn_only=True)
    torch.set_num_threads(cpu_count())


def use_bf16(config: Config, device: torch.device) -> bool:
    """Whether the convnet runs under bf16 autocast: as configured, or (auto) where bf16 is fast."""
    if config.precision != "auto":
        return config.precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return "amx_bf16" in _cpu_flags()  # CPUs with AMX tiles run bf16 convolutions several times faster


def cpu_count() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def machine_description() -> str:
    """The CPU model with the vector instructions torch's CPU kernels use (two CPUs of one model name may differ in
    them, and so in the last bits of every result), its cores, the GPU if any, and the torch version, in words (what
    benchmarks record)."""
    cpu = platform.machine()
    try:
        models = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = models[0].split(":", 1)[1].strip() if models else cpu
    except OSError:
        pass
    gpu = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    return f"{cpu} ({torch.backends.cpu.get_cpu_capability()}), {cpu_count()} cores, {gpu}; torch {torch.__version__}"


@cache
def _cpu_flags() -> frozenset[str]:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(word for line in cpuinfo.splitlines() if line.startswith("flags") for word in line.split())


def timed(
    seconds: dict[str, float], name: str, device: torch.device, call: Callable[..., Result], *args: Any
) -> Result:
    """call(*args), its wall time (the device's queued work included) recorded as seconds[name]."""
    start = time.perf_counter()
    result = call(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds[name] = round(time.perf_counter() - start, 4)
    return result
