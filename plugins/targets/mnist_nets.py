"""A LeNet-style CNN for 28x28 (and other small) images: the MNIST / Fashion-MNIST evaluation model.

LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, https://doi.org/10.1109/5.726791): two 5x5 convolution +
subsampling stages and a fully connected head. As modern re-implementations do, this one uses ReLU, max-pooling,
'same' padding and wider stages (16 and 32 channels instead of 6 and 16). It is deliberately of a different
design than the ``small-cnn`` target (3x3 convolutions with BatchNorm at full resolution, adaptive average
pooling): the evaluation model of the model-inversion protocol (GMI, KEDMI) must not share the target's
architecture. Like the other bundled classifiers it exposes ``features(x)`` (the penultimate embedding) and
``head(f)``, so targets built from it have the ``features`` capability.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from invertkit.core.hookspecs import hookimpl


class LeNet(nn.Module):
    def __init__(self, num_classes: int, in_shape: tuple[int, int, int], width: int = 16, feat_dim: int = 128,
                 dropout: float = 0.25):
        super().__init__()
        c, h, w = in_shape
        self.conv = nn.Sequential(
            nn.Conv2d(c, width, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, c, h, w)).shape[1]
        self.fc = nn.Sequential(nn.Linear(flat, feat_dim), nn.ReLU(inplace=True))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(feat_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x))

    def head(self, f: Tensor) -> Tensor:
        return self.out(self.drop(f))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def lenet(num_classes: int, in_shape: tuple[int, int, int], **kw) -> nn.Module:  # noqa: ANN003
    """LeNet-style CNN: 5x5 conv (width) + max-pool, 5x5 conv (2 * width) + max-pool, FC feat_dim, FC classes."""
    return LeNet(num_classes, in_shape, **kw)


lenet.name = "lenet"  # type: ignore[attr-defined]
lenet.summary = "LeNet-style CNN (the MNIST / Fashion-MNIST evaluation model): two 5x5 conv + max-pool stages, FC head"  # type: ignore[attr-defined]
lenet.paper = "https://doi.org/10.1109/5.726791"  # type: ignore[attr-defined]


@hookimpl
def invertkit_register_architectures(register) -> None:
    register(lenet)
