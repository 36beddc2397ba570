"""``tabular-mlp``: a small multilayer perceptron over feature vectors (records, ``input_shape = (D,)``), the target
and evaluation model of the tabular presets. It has the ``features(x)``/``head(f)`` split of invertkit's zoo (the
penultimate embedding, the linear head), so targets built from it expose ``features``."""

from __future__ import annotations

import math

from torch import nn

from invertkit.core.hookspecs import hookimpl
from invertkit.core.zoo.arch import BodyHead


class TabularMLP(BodyHead):
    def __init__(self, num_classes: int, in_shape: tuple[int, ...], hidden: int = 64, depth: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(in_shape)
        for _ in range(max(1, int(depth))):
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)


def tabular_mlp(num_classes: int, in_shape: tuple[int, ...], **kw: float) -> nn.Module:
    """``depth`` ReLU layers of ``hidden`` units over the flattened input, then a linear head."""
    return TabularMLP(num_classes, in_shape, **kw)  # type: ignore[arg-type]


tabular_mlp.name = "tabular-mlp"  # type: ignore[attr-defined]
tabular_mlp.summary = "MLP over feature vectors (records): depth x hidden ReLU layers, linear head"  # type: ignore[attr-defined]
tabular_mlp.paper = "https://www.usenix.org/conference/usenixsecurity22/presentation/mehnaz"  # type: ignore[attr-defined]  # the DNN target of MIAI's tabular experiments


@hookimpl
def invertkit_register_architectures(register) -> None:  # noqa: ANN001 - a Registrar
    register(tabular_mlp)
