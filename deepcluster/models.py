"""Convnets for DeepCluster: a fixed Sobel front, a trunk producing features, and a k-way top layer.

The trunk ends in the classifier's penultimate linear layer *without* its ReLU. By default
(config head=prototypes, DeepCluster-v2) a projection (ReLU + linear) follows, its L2-normalised
output is what k-means clusters each epoch, and the top layer is `PrototypeHead`: the centroids
themselves. With head=linear (the paper) the trunk's features are clustered, and the top layer is
`ClusterHead`: ReLU + a linear layer re-initialised at random every epoch (Caron et al. 2018, Sec. 3.1).
The convolutional representation (`DeepClusterNet.representation`) is what evaluation and the final
grouping use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deepcluster.sobel import SobelFilter

# the representation: the last convolutional block's output average-pooled to 4 x 4 (for a 28-pixel image on the
# small convnet, that output as it is)
REPRESENTATION_GRID = 4


@dataclass(frozen=True)
class ArchSpec:
    """What the data pipeline needs to know of an architecture."""

    min_input_size: int
    feature_dim: int
    conv_channels: int  # channels of the last convolution
    default_input_size: int  # smaller images are enlarged to this side unless an image_size is configured


ARCHS: dict[str, ArchSpec] = {
    # small: its three 2x2 poolings leave a 4 x 4 map of a 28-pixel image; an 8-pixel one (scikit-learn's
    # digits) would be pooled down to a single position, so smaller images are enlarged to 28 (docs/RESULTS.md)
    "small": ArchSpec(min_input_size=8, feature_dim=512, conv_channels=128, default_input_size=28),
    "alexnet": ArchSpec(min_input_size=63, feature_dim=4096, conv_channels=256, default_input_size=63),
    "vgg16": ArchSpec(min_input_size=32, feature_dim=4096, conv_channels=512, default_input_size=32),
}


def _conv_block(
    in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, padding: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _small_trunk(in_channels: int) -> tuple[nn.Sequential, nn.Sequential]:
    """A 6-conv VGG-style net for 28x28-ish images (about 0.03 GMAC per 28x28 image)."""
    layers: list[nn.Module] = []
    for width in (32, 64, 128):
        layers += _conv_block(in_channels, width) + _conv_block(width, width) + [nn.MaxPool2d(2, ceil_mode=True)]
        in_channels = width
    layers.append(nn.AdaptiveAvgPool2d(3))
    classifier = nn.Sequential(
        nn.Flatten(), nn.Linear(128 * 9, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, 512)
    )
    return nn.Sequential(*layers), classifier


def _alexnet_trunk(in_channels: int) -> tuple[nn.Sequential, nn.Sequential]:
    """AlexNet with batch norm, as in DeepCluster's reference model (input >= 63 pixels)."""
    layers = (
        _conv_block(in_channels, 96, 11, 4, 2)
        + [nn.MaxPool2d(3, 2)]
        + _conv_block(96, 256, 5, 1, 2)
        + [nn.MaxPool2d(3, 2)]
        + _conv_block(256, 384)
        + _conv_block(384, 384)
        + _conv_block(384, 256)
        + [nn.MaxPool2d(3, 2), nn.AdaptiveAvgPool2d(6)]
    )
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(256 * 36, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
    )
    return nn.Sequential(*layers), classifier


def _vgg16_trunk(in_channels: int) -> tuple[nn.Sequential, nn.Sequential]:
    """VGG-16 with batch norm (input >= 32 pixels)."""
    layers: list[nn.Module] = []
    for width, repeats in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(repeats):
            layers += _conv_block(in_channels, width)
            in_channels = width
        layers.append(nn.MaxPool2d(2))
    layers.append(nn.AdaptiveAvgPool2d(7))
    classifier = nn.Sequential(
        nn.Flatten(), nn.Linear(512 * 49, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(4096, 4096)
    )
    return nn.Sequential(*layers), classifier


_BUILDERS = {"small": _small_trunk, "alexnet": _alexnet_trunk, "vgg16": _vgg16_trunk}


class DeepClusterNet(nn.Module):
    """Sobel front + convolutional trunk + classifier body: grayscale (N, 1, H, W) -> features (N, D).

    With `proj_dim`, a projection (ReLU + linear) follows and the features are its L2-normalised
    output, of dimension proj_dim (DeepCluster-v2); `trunk` still gives the classifier body's output.
    With `intensity`, the front passes the grayscale itself on beside its two gradients.
    """

    def __init__(
        self, arch: str, generator: torch.Generator, proj_dim: int | None = None, intensity: bool = False
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}: expected one of {', '.join(ARCHS)}")
        self.arch = arch
        self.trunk_dim = ARCHS[arch].feature_dim
        self.representation_dim = ARCHS[arch].conv_channels * REPRESENTATION_GRID**2
        self.feature_dim = proj_dim or self.trunk_dim
        self.sobel = SobelFilter(intensity)
        self.convs, self.classifier = _BUILDERS[arch](self.sobel.channels)
        self.projection = nn.Linear(self.trunk_dim, proj_dim) if proj_dim else None
        self._initialise(generator)

    def _initialise(self, generator: torch.Generator) -> None:
        """Reference initialisation: Kaiming for convs, N(0, 0.01) for linears, zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01, generator=generator)
                nn.init.zeros_(module.bias)

    def representation(self, grayscale: torch.Tensor) -> torch.Tensor:
        """The last convolutional block's output (before the pooling to the classifier's input) average-pooled to a
        REPRESENTATION_GRID² grid, flattened (N, channels * grid²): the image representation that kNN, the linear
        probe and the final grouping use. The paper evaluates its convnets on their convolutional layers (Caron et
        al. 2018, Sec. 5.1); the classifier body above them is trained for the pseudo-labels of the moment and
        keeps less of the image (measured: docs/RESULTS.md)."""
        return self._pooled(self._convolved(grayscale))

    def trunk(self, grayscale: torch.Tensor) -> torch.Tensor:
        """The classifier body's output (N, trunk_dim), before any projection."""
        return self._classified(self._convolved(grayscale))

    def forward(self, grayscale: torch.Tensor) -> torch.Tensor:
        return self._projected(self.trunk(grayscale))

    def features_and_representation(self, grayscale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` and `representation` of the same images from one pass through the convolutions."""
        convolved = self._convolved(grayscale)
        return self._projected(self._classified(convolved)), self._pooled(convolved)

    def _convolved(self, grayscale: torch.Tensor) -> torch.Tensor:
        """The last convolutional block's output: every trunk ends in its classifier's adaptive pooling."""
        return self.convs[:-1](self.sobel(grayscale))

    def _classified(self, convolved: torch.Tensor) -> torch.Tensor:
        """The classifier body on the last block's output, after the trunk's final adaptive pooling."""
        return self.classifier(self.convs[-1](convolved))

    def _pooled(self, convolved: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(convolved, REPRESENTATION_GRID).flatten(1)

    def _projected(self, features: torch.Tensor) -> torch.Tensor:
        if self.projection is None:
            return features
        return nn.functional.normalize(self.projection(torch.relu(features)), dim=1)


class ClusterHead(nn.Module):
    """ReLU + top linear layer mapping features (N, D) to k pseudo-class logits (N, k)."""

    def __init__(self, feature_dim: int, num_clusters: int) -> None:
        super().__init__()
        self.linear = nn.Linear(feature_dim, num_clusters)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Weights N(0, 0.01), zero bias: the per-epoch re-initialisation of the paper."""
        nn.init.normal_(self.linear.weight, 0.0, 0.01, generator=generator)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.relu(features))


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return images.float().div_(255.0)


class PrototypeHead(nn.Module):
    """DeepCluster-v2's top layer: cosine similarity to the k-means centroids, over a temperature.

    The prototypes are the epoch's centroids (L2-normalised) and stay fixed while training: the
    convnet learns to bring augmented views of an image to the centroid of the clean image's cluster.
    """

    prototypes: torch.Tensor

    def __init__(self, centroids: torch.Tensor, temperature: float) -> None:
        super().__init__()
        self.register_buffer("prototypes", nn.functional.normalize(centroids.float(), dim=1))
        self.temperature = temperature

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.prototypes.T / self.temperature
