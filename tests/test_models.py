import pytest
import torch

from deepcluster.models import ARCHS, ClusterHead, DeepClusterNet


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_each_arch_maps_its_minimum_input_to_features(arch):
    model = DeepClusterNet(arch, torch.Generator().manual_seed(0)).eval()
    size = ARCHS[arch].min_input_size
    with torch.no_grad():
        features = model(torch.rand(2, 1, size, size))
    assert features.shape == (2, ARCHS[arch].feature_dim)


def test_initialisation_comes_from_the_generator():
    first = DeepClusterNet("small", torch.Generator().manual_seed(1)).state_dict()
    again = DeepClusterNet("small", torch.Generator().manual_seed(1)).state_dict()
    other = DeepClusterNet("small", torch.Generator().manual_seed(2)).state_dict()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["convs.0.weight"], other["convs.0.weight"])


def test_head_reset_is_normal_001_with_zero_bias():
    head = ClusterHead(512, 300)
    torch.nn.init.constant_(head.linear.bias, 3.0)
    head.reset_parameters(torch.Generator().manual_seed(0))
    assert head.linear.bias.abs().max() == 0
    assert abs(float(head.linear.weight.detach().std()) - 0.01) < 0.0005
    logits = head(torch.randn(4, 512))
    assert logits.shape == (4, 300)


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown arch 'resnet'"):
        DeepClusterNet("resnet", torch.Generator())
