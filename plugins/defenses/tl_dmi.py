"""``tl-dmi``: transfer-learning defense, Ho et al., "Model Inversion Robustness: Can Transfer Learning Help?"
(CVPR 2024, https://arxiv.org/abs/2405.05588).

TL-DMI limits how much the *early* layers of the target encode about the private data: those layers are
trained on public data only and frozen, and the private data only tunes the last layers.

1. **Pre-train** the target architecture's feature extractor, with a temporary linear head over the public
   classes, on the public split (its own labels).
2. **Fine-tune** on the private split: the first ``frozen_fraction`` of the network's layers keep their
   public weights (frozen, their BatchNorm statistics too); the remaining layers and a fresh private head
   are trained.

A "layer" is a convolution or linear layer together with the normalisation layers that follow it (the small
CNN has five: three conv blocks, the penultimate linear layer and the head); the head is always trained, so
``frozen_fraction`` counts the layers before it (1.0 trains the head only — a linear probe; 0.0 is
pre-training followed by full fine-tuning). It is the strength: freezing more is more robust.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import DefenseContext
from invertkit.core.interfaces.target import split_classifier
from invertkit.core.zoo.defended_training import DefenseTraining, cross_entropy, fit, parameterised_layers, pick

NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def layer_groups(module: nn.Module) -> list[list[nn.Module]]:
    """Parameterised layers in order, each normalisation layer grouped with the layer before it."""
    groups: list[list[nn.Module]] = []
    for _, m in parameterised_layers(module):
        if isinstance(m, NORMS) and groups:
            groups[-1].append(m)
        else:
            groups.append([m])
    return groups


class _PublicModel(nn.Module):
    """The target's feature extractor with a head over the public classes (pre-training only)."""

    def __init__(self, net: nn.Module, extract: Any, feat_dim: int, num_public: int) -> None:
        super().__init__()
        self.net = net
        self._extract = extract
        self.public_head = nn.Linear(feat_dim, num_public)

    def forward(self, x: Tensor) -> Tensor:
        return self.public_head(self._extract(x).reshape(len(x), -1))


class TLDMI(DefenseTraining):
    """Pre-train on public data, freeze the early layers, fine-tune the rest on private data."""

    class Config(ComponentConfig):
        frozen_fraction: float = Field(
            0.75,
            ge=0.0,
            le=1.0,
            description="Fraction of the layers before the head kept frozen at their public weights (the strength: "
            "more is stronger; 1.0 trains only the head).",
        )
        pretrain_epochs: int | None = Field(None, ge=1, description="Public pre-training epochs; None: the recipe's.")
        epochs: int | None = Field(None, ge=1, description="Private fine-tuning epochs; None: the recipe's.")
        lr: float | None = Field(None, gt=0.0, description="Adam learning rate; None: the recipe's.")
        batch_size: int | None = Field(None, ge=1, description="Mini-batch size; None: the recipe's.")

    name: ClassVar[str] = "tl-dmi"
    threat_model: ClassVar[str] = "training-time"
    summary: ClassVar[str] = (
        "TL-DMI: pre-train on the public split, freeze the first layers, fine-tune the rest (and a new head) on "
        "private data."
    )
    paper: ClassVar[str] = "https://arxiv.org/abs/2405.05588"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._facts: dict[str, Any] = {}

    def frozen_groups(self, net: nn.Module) -> tuple[list[list[nn.Module]], int]:
        groups = layer_groups(net)
        before_head = max(0, len(groups) - 1)
        n = int(round(float(self.config.frozen_fraction) * before_head))
        return groups[:n], len(groups)

    def train(self, ctx: DefenseContext) -> nn.Module:
        hp, net = self.start(ctx)
        seed = self.training_seed(ctx)
        split = split_classifier(net)
        if split is None:
            raise UsageError(f"tl-dmi: the target architecture {type(net).__name__} has no features()/head() split")
        extract = split[0]
        xp, yp = ctx.data.public
        classes = torch.unique(yp)
        remap = torch.full((int(yp.max()) + 1,), -1, dtype=torch.long)
        remap[classes] = torch.arange(len(classes))
        with torch.no_grad():
            net.eval()
            feat_dim = int(extract(xp[:2]).reshape(2, -1).shape[1])
        public = _PublicModel(net, extract, feat_dim, len(classes))
        pre_epochs = int(pick(self.config.pretrain_epochs, hp["epochs"]))
        fit(public, cross_entropy, (xp, remap[yp]), seed=seed, **{**hp, "epochs": pre_epochs})

        frozen, total = self.frozen_groups(net)
        frozen_modules = [m for g in frozen for m in g]
        for m in frozen_modules:
            for p in m.parameters():
                p.requires_grad_(False)

        def keep_frozen_stats(epoch: int, model: nn.Module) -> None:
            for m in frozen_modules:
                if isinstance(m, NORMS):
                    m.eval()

        fit(net, cross_entropy, ctx.data.private_train, seed=seed + 1, on_epoch=keep_frozen_stats, **hp)
        for p in net.parameters():
            p.requires_grad_(True)
        self._facts = {"frozen_layers": len(frozen), "layers": total}
        return net

    def after_load(self, net: nn.Module, ctx: DefenseContext) -> None:
        frozen, total = self.frozen_groups(net)
        self._facts = {"frozen_layers": len(frozen), "layers": total}

    def report(self) -> dict[str, Any]:
        return dict(self._facts)


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(TLDMI)
