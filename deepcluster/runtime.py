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
    """Deterministic kernels when asked (exact resume on CPU); intra-op threads = cores.

    Deterministic mode would also fill every new tensor's memory with NaN before a kernel writes it, a check for
    kernels that read memory they never wrote, which took about a tenth of a CPU training step. It is turned off: a run's
    checkpoints, features and evaluation came out the same to the bit without it (docs/PERFORMANCE.md)."""
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(config.deterministic, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
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
    """The CPU model with the vector instructions torch's CPU kernels use (`cpu_kernels`), its cores, the GPU if any,
    and the torch version, in words (what benchmarks record)."""
    cpu = platform.machine()
    try:
        models = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = models[0].split(":", 1)[1].strip() if models else cpu
    except OSError:
        pass
    gpu = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    return f"{cpu} ({cpu_kernels()}), {cpu_count()} cores, {gpu}; torch {torch.__version__}"


ONEDNN_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")  # what caps oneDNN's instructions (the first set)
KERNEL_LIMITS = ("ATEN_CPU_CAPABILITY", *ONEDNN_ISA_VARIABLES, "OPENBLAS_CORETYPE")  # what picks the CPU kernels
X86_LEVELS = ("SSE41", "AVX", "AVX2", "AVX512")  # oneDNN's instruction sets by family, lowest first


def cpu_kernels() -> str:
    """The vector instructions of torch's CPU kernels: ATen's (`ATEN_CPU_CAPABILITY` may lower them), and oneDNN's,
    which run the convolutions (`ONEDNN_MAX_CPU_ISA` may lower them), where they are another family: "AVX2",
    "AVX512" or "AVX2, oneDNN AVX512". The same seed trains a different network under other instructions; with the
    same instructions and threads, another chip can train the same (an AVX-512 AMD EPYC with both variables set to
    AVX2 trained an AVX2 AMD EPYC's run to the last bit)."""
    aten = torch.backends.cpu.get_cpu_capability()
    onednn = _onednn_family()
    return aten if onednn in (None, aten) else f"{aten}, oneDNN {onednn}"


def kernel_limits() -> list[str]:
    """The variables of KERNEL_LIMITS set in the environment, as `NAME=VALUE` (words before a command that gives the
    same results on another machine)."""
    return [f"{name}={os.environ[name]}" for name in KERNEL_LIMITS if os.environ.get(name)]


def _onednn_family() -> str | None:
    """The family of X86_LEVELS whose instructions oneDNN uses: the CPU's best, capped by the environment; None on a
    CPU without AVX2."""
    flags = _cpu_flags()
    native = "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    cap = next((os.environ[name] for name in ONEDNN_ISA_VARIABLES if os.environ.get(name)), "ALL").upper()
    if native is None or cap == "ALL":
        return native
    if cap.startswith("AVX10"):  # AVX10.1 is AVX-512's instructions under another name
        cap = "AVX512"
    capped = next((level for level in reversed(X86_LEVELS) if cap.startswith(level)), cap)
    return min(native, capped, key=X86_LEVELS.index) if capped in X86_LEVELS else capped


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
