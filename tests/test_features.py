"""Feature extraction: every image once, in order, in eval mode, whatever the batch size."""

import torch

from deepcluster.features import extract_features, features_and_representation, representation_features
from deepcluster.models import DeepClusterNet


def small_model() -> DeepClusterNet:
    return DeepClusterNet("small", torch.Generator().manual_seed(0), 16)


def test_features_are_those_of_each_image_in_eval_mode_whatever_the_batch():
    model = small_model()
    inputs = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    model.train()
    whole = extract_features(model, inputs, batch_size=10)
    assert not model.training  # dropout off: the same image always gives the same features
    in_batches = extract_features(model, inputs, batch_size=3)
    one = extract_features(model, inputs[4:5], batch_size=1)
    assert whole.shape == (10, model.feature_dim) and whole.dtype == torch.float32
    assert torch.allclose(whole, in_batches, atol=1e-5) and torch.allclose(whole[4:5], one, atol=1e-5)


def test_the_representation_is_l2_normalised_and_its_own_dimension():
    model = small_model()
    inputs = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    features = representation_features(model, inputs, batch_size=4)
    assert features.shape == (6, model.representation_dim)
    assert torch.allclose(features.norm(dim=1), torch.ones(6), atol=1e-5)


def test_one_pass_gives_the_features_and_the_representation_of_two():
    model = small_model()
    inputs = torch.randint(0, 256, (7, 1, 28, 28), dtype=torch.uint8)
    features, representation = features_and_representation(model, inputs, batch_size=4)
    assert torch.equal(features, extract_features(model, inputs, batch_size=4))
    assert torch.equal(representation, representation_features(model, inputs, batch_size=4))
