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
    assert f" ({torch.backends.cpu.get_cpu_capability()}), " in runtime.machine_description()
