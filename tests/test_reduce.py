import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepcluster.reduce import fit_pca_whitening, pca_whiten_l2


@settings(max_examples=30, deadline=None)
@given(
    num_points=st.integers(3, 60),
    feature_dim=st.integers(2, 20),
    seed=st.integers(0, 2**31 - 1),
    duplicate=st.booleans(),
)
def test_output_is_unit_norm(num_points, feature_dim, seed, duplicate):
    features = torch.randn(num_points, feature_dim, generator=torch.Generator().manual_seed(seed))
    if duplicate:
        features[: num_points // 2] = features[0]
    dim = min(feature_dim, num_points - 1)
    reduced, _ = pca_whiten_l2(features, dim)
    assert reduced.shape == (num_points, dim) and reduced.dtype == torch.float32
    assert torch.isfinite(reduced).all()
    norms = reduced.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)


def test_whitening_gives_identity_covariance():
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(6, 6, generator=generator)
    features = torch.randn(5000, 6, generator=generator) @ mixing + 3.0
    pca = fit_pca_whitening(features, 4)
    projected = features @ pca.projection - pca.mean @ pca.projection
    covariance = projected.T @ projected / (len(features) - 1)
    assert torch.allclose(covariance, torch.eye(4), atol=1e-3)


def test_pca_is_sign_fixed_whatever_the_order_of_the_points():
    features = torch.randn(100, 8, generator=torch.Generator().manual_seed(3))
    first = fit_pca_whitening(features, 5).projection
    largest = first.gather(0, first.abs().argmax(dim=0, keepdim=True))
    assert (largest > 0).all()  # each component's largest loading is positive
    shuffled = fit_pca_whitening(features[torch.randperm(100, generator=torch.Generator().manual_seed(4))], 5)
    assert torch.allclose(shuffled.projection, first, atol=1e-4)
