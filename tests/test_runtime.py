"""The runtime set-up: precision and device."""

import pytest
import torch

from deepcluster import runtime
from deepcluster.errors import ConfigError
from tests.helpers import tiny_config


@pytest.mark.parametrize(("precision", "expected"), [("fp32", False), ("bf16", True)])
def test_precision_is_as_configured(precision: str, expected: bool):
    assert runtime.use_bf16(tiny_config(precision=precision), torch.device("cpu")) is expected


def test_cuda_requested_without_gpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        runtime.resolve_device("cuda")
    assert str(runtime.resolve_device("auto")) == "cpu"


def test_the_machine_is_described_with_the_vector_instructions_that_torch_s_kernels_use():
    assert runtime.cpu_kernels().split(",")[0] == torch.backends.cpu.get_cpu_capability()
    assert f" ({runtime.cpu_kernels()}), " in runtime.machine_description()


def test_deterministic_kernels_without_filling_new_tensors_with_nan():
    runtime.configure_torch(tiny_config())
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory is False


@pytest.mark.parametrize(
    ("flags", "aten", "onednn_cap", "expected"),
    [
        ({"avx2", "avx512f"}, "AVX512", None, "AVX512"),
        ({"avx2", "avx512f"}, "AVX2", "AVX2", "AVX2"),  # an AVX-512 CPU limited to AVX2 trains as an AVX2 CPU
        ({"avx2", "avx512f"}, "AVX2", None, "AVX2, oneDNN AVX512"),
        ({"avx2", "avx512f"}, "AVX512", "avx512_core_amx", "AVX512"),
        ({"avx2", "avx512f"}, "AVX512", "AVX10_1_512", "AVX512"),
        ({"avx2"}, "AVX2", "AVX512_CORE", "AVX2"),  # a cap above the CPU's instructions changes nothing
        ({"avx2"}, "AVX2", "SSE41", "AVX2, oneDNN SSE41"),
        (set(), "DEFAULT", None, "DEFAULT"),  # no x86 vector instructions: ATen's alone
    ],
)
def test_the_kernels_named_are_those_of_aten_and_of_onednn(monkeypatch, flags, aten, onednn_cap, expected):
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: aten)
    for name in runtime.ONEDNN_ISA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    if onednn_cap is not None:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn_cap)
    assert runtime.cpu_kernels() == expected
    assert f" ({expected}), " in runtime.machine_description()
