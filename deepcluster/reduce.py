"""PCA-whitening and L2 normalisation of features before k-means (Caron et al. 2018, Sec. 4).

Computed in torch on the features' device. The covariance (D x D) is accumulated in float64 for
a stable eigendecomposition; the features themselves stay float32 and are never copied centred.
Across ranks (`distributed`), each holding a shard of the features, the sums are summed over the ranks, so
every rank fits the same PCA, that of all the features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deepcluster.distributed import all_reduce_sum
from deepcluster.errors import InputError

EIGENVALUE_FLOOR = 1e-8  # relative to the largest eigenvalue: keeps whitening finite on rank-deficient data


@dataclass(frozen=True)
class PCAWhitening:
    """x -> normalize((x - mean) @ projection). mean: (D,), projection: (D, d) = components / sqrt(eigenvalues)."""

    mean: torch.Tensor
    projection: torch.Tensor

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """features: (N, D) float32 -> (N, d) float32, each row of unit L2 norm."""
        reduced = features @ self.projection - self.mean @ self.projection
        return torch.nn.functional.normalize(reduced, dim=1)


def apply_reduction(features: torch.Tensor, pca: PCAWhitening | None) -> torch.Tensor:
    """An epoch's reduction applied to features (N, D): its PCA-whitening where it had one, else L2 only."""
    return pca.transform(features) if pca is not None else torch.nn.functional.normalize(features, dim=1)


def fit_pca_whitening(features: torch.Tensor, dim: int) -> PCAWhitening:
    """Fit a whitening PCA to `dim` dimensions on features (N, D)."""
    feature_dim = features.shape[1]
    sums = torch.cat([features.sum(dim=0), torch.tensor([len(features)], device=features.device)]).double()
    all_reduce_sum(sums)
    num_points = int(sums[-1])
    if not 0 < dim <= feature_dim:
        raise InputError(f"PCA dimension {dim} must be in 1..{feature_dim} (the feature dimension)")
    if num_points < 2:
        raise InputError(f"PCA needs at least 2 points, got {num_points}")
    mean = (sums[:-1] / num_points).to(features.dtype)
    gram = all_reduce_sum((features.T @ features).double())
    covariance = (gram - num_points * torch.outer(mean.double(), mean.double())) / (num_points - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0)[:dim], eigenvectors.flip(1)[:, :dim]
    floor = EIGENVALUE_FLOOR * eigenvalues[0].clamp(min=torch.finfo(torch.float64).tiny)
    # Fix each component's sign (largest-magnitude loading positive) so the result does not
    # depend on the eigensolver's arbitrary choice.
    signs = torch.sign(eigenvectors.gather(0, eigenvectors.abs().argmax(dim=0, keepdim=True)))
    projection = eigenvectors * signs / eigenvalues.clamp(min=floor).sqrt()
    return PCAWhitening(mean=mean, projection=projection.to(features.dtype))


def pca_whiten_l2(features: torch.Tensor, dim: int) -> tuple[torch.Tensor, PCAWhitening]:
    """Fit and apply PCA-whitening + L2 normalisation. Returns ((N, dim) features, the fitted transform)."""
    pca = fit_pca_whitening(features, dim)
    return pca.transform(features), pca
