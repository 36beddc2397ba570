"""Small classifiers for the CPU-sized scenarios (8x8 digits, 28x28 MNIST): a CNN target and an MLP
evaluation model of a different architecture. Both expose ``features(x)`` (the penultimate embedding)
and ``head(f)`` so targets built from them have the ``features`` capability."""

from __future__ import annotations

from torch import Tensor, nn

from invertkit.core.hookspecs import hookimpl
from invertkit.core.zoo.arch import BodyHead


class SmallCNN(BodyHead):
    def __init__(self, num_classes: int, in_shape: tuple[int, int, int], width: int = 32, feat_dim: int = 128):
        super().__init__()
        c = in_shape[0]
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(4 * width * 16, feat_dim),
            nn.ReLU(inplace=True),
        )
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(feat_dim, num_classes)

    def head(self, f: Tensor) -> Tensor:
        return self.fc(self.drop(f))


class SmallMLP(BodyHead):
    def __init__(self, num_classes: int, in_shape: tuple[int, int, int], hidden: int = 256, feat_dim: int = 128):
        super().__init__()
        n = in_shape[0] * in_shape[1] * in_shape[2]
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(n, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, feat_dim),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(feat_dim, num_classes)


def small_cnn(num_classes: int, in_shape: tuple[int, int, int], **kw: int) -> nn.Module:
    """A 3-conv CNN with BatchNorm (the ``digits`` and ``mnist`` target)."""
    return SmallCNN(num_classes, in_shape, **kw)


small_cnn.name = "small-cnn"  # type: ignore[attr-defined]
small_cnn.summary = "Small 3-conv CNN with BatchNorm (the digits and MNIST target)"  # type: ignore[attr-defined]
small_cnn.paper = ""  # type: ignore[attr-defined]  # a baseline design, no paper


def small_mlp(num_classes: int, in_shape: tuple[int, int, int], **kw: int) -> nn.Module:
    """A 2-layer MLP (the evaluation model: deliberately not the target's architecture)."""
    return SmallMLP(num_classes, in_shape, **kw)


small_mlp.name = "small-mlp"  # type: ignore[attr-defined]
small_mlp.summary = "Small 2-layer MLP (an evaluation model deliberately not the target's architecture)"  # type: ignore[attr-defined]
small_mlp.paper = ""  # type: ignore[attr-defined]  # a baseline design, no paper


@hookimpl
def invertkit_register_architectures(register) -> None:
    register(small_cnn)
    register(small_mlp)
