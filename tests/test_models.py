import pytest
import torch

from deepcluster.models import ARCHS, ClusterHead, DeepClusterNet, PrototypeHead


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_each_arch_maps_its_minimum_input_to_features(arch):
    model = DeepClusterNet(arch, torch.Generator().manual_seed(0)).eval()
    size = ARCHS[arch].min_input_size
    with torch.no_grad():
        features = model(torch.rand(2, 1, size, size))
        representation = model.representation(torch.rand(2, 1, size, size))
    assert features.shape == (2, ARCHS[arch].feature_dim)
    assert isinstance(model.convs[-1], torch.nn.AdaptiveAvgPool2d)  # what the representation leaves out
    assert representation.shape == (2, model.representation_dim)


def test_the_representation_of_a_28_pixel_image_is_the_last_convolutional_map_unpooled():
    model = DeepClusterNet("small", torch.Generator().manual_seed(0)).eval()
    images = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        last_map = model.convs[:-1](model.sobel(images))
        assert last_map.shape == (2, 128, 4, 4)
        assert torch.equal(model.representation(images), last_map.flatten(1))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_the_intensity_front_passes_the_grayscale_beside_its_gradients(arch):
    model = DeepClusterNet(arch, torch.Generator().manual_seed(0), intensity=True).eval()
    images = torch.rand(2, 1, 12, 12)
    front = model.sobel(images)
    assert front.shape == (2, 3, 12, 12) and model.convs[0].in_channels == 3
    assert torch.equal(front[:, :2], DeepClusterNet(arch, torch.Generator()).sobel(images))
    assert torch.allclose(front[:, 2:], images)
    size = ARCHS[arch].min_input_size
    with torch.no_grad():
        assert model(torch.rand(2, 1, size, size)).shape == (2, ARCHS[arch].feature_dim)


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


def test_projection_head_gives_unit_features_and_keeps_the_trunk():
    model = DeepClusterNet("small", torch.Generator().manual_seed(0), proj_dim=16).eval()
    images = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        features, trunk = model(images), model.trunk(images)
    assert features.shape == (3, 16) and model.feature_dim == 16
    assert torch.allclose(features.norm(dim=1), torch.ones(3))
    assert trunk.shape == (3, model.trunk_dim) == (3, 512)


def test_prototype_head_is_cosine_to_the_centroids_over_the_temperature():
    centroids = torch.tensor([[2.0, 0.0], [0.0, 0.5], [-1.0, -1.0]])
    head = PrototypeHead(centroids, temperature=0.1)
    logits = head(torch.nn.functional.normalize(centroids, dim=1))
    assert torch.equal(logits.argmax(dim=1), torch.arange(3))
    assert torch.allclose(logits.diagonal(), torch.full((3,), 10.0))
    assert list(head.parameters()) == []  # fixed while training
