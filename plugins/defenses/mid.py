"""``mid``: Mutual Information regularisation based Defense, Wang et al., "Improving Robustness to Model
Inversion Attacks via Mutual Information Regularization" (AAAI 2021, https://arxiv.org/abs/2009.05241).

MID bounds the information the prediction carries about the input with a variational information bottleneck
(Alemi et al.) between the feature extractor and the classifier head. As in the authors' code
(``MCNN_vib``/``VGG16_vib``): the penultimate features ``f`` (dimension ``d``) go through a linear layer to
``2k`` statistics (``k = d / 2``), ``mu`` = the first ``k``, ``std = softplus(s - 5)`` from the rest, and the
head classifies ``z = mu + std * eps`` (``eps ~ N(0, I)``). The loss is

    CE(head(z), y) + beta * KL(N(mu, std^2) || N(0, I)),   KL = -1/2 * sum(1 + 2 log std - mu^2 - std^2)

``beta`` is the strength (the authors' default 1e-2; the paper's CelebA results use 0.003-0.02). At test
time the released network classifies ``mu`` (the mean of the bottleneck, deterministic; the authors' code
keeps sampling — ``sample_at_eval`` restores that). ``features()`` of the defended target is ``mu``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import DefenseContext
from invertkit.core.interfaces.target import split_classifier
from invertkit.core.zoo.defended_training import DefenseTraining, fit, recipe_hparams


class VIBClassifier(nn.Module):
    """``base``'s feature extractor, a stochastic bottleneck ``(mu, std) -> z`` and a linear head on ``z``."""

    def __init__(self, base: nn.Module, num_classes: int, input_shape: tuple[int, ...], k: int | None = None,
                 sample_at_eval: bool = False) -> None:
        super().__init__()
        split = split_classifier(base)
        if split is None:
            raise UsageError(f"mid: the target architecture {type(base).__name__} has no features()/head() split")
        self.base = base
        self._extract = split[0]
        with torch.no_grad():
            was = base.training
            base.eval()
            feat_dim = int(self._extract(torch.zeros(2, *input_shape)).reshape(2, -1).shape[1])
            base.train(was)
        self.k = int(k) if k else max(1, feat_dim // 2)
        self.st_layer = nn.Linear(feat_dim, 2 * self.k)
        self.fc_layer = nn.Linear(self.k, num_classes)
        self.sample_at_eval = bool(sample_at_eval)

    def statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self._extract(x).reshape(len(x), -1)
        s = self.st_layer(f)
        return s[:, : self.k], F.softplus(s[:, self.k :] - 5.0, beta=1)

    def stochastic(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(logits of a sampled z, mu, std)``."""
        mu, std = self.statistics(x)
        z = mu + std * torch.randn_like(std)
        return self.fc_layer(z), mu, std

    def features(self, x: Tensor) -> Tensor:
        mu, std = self.statistics(x)
        if self.training or self.sample_at_eval:
            return mu + std * torch.randn_like(std)
        return mu

    def head(self, z: Tensor) -> Tensor:
        return self.fc_layer(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def information_loss(mu: Tensor, std: Tensor) -> Tensor:
    """KL(N(mu, std^2) || N(0, I)) summed over the bottleneck, averaged over the batch."""
    return -0.5 * (1 + 2 * std.clamp_min(1e-12).log() - mu.pow(2) - std.pow(2)).sum(dim=1).mean()


class MID(DefenseTraining):
    """Train the target with a variational information bottleneck before its head (loss CE + beta * KL)."""

    class Config(ComponentConfig):
        beta: float = Field(
            0.01,
            ge=0.0,
            description="Weight of the information (KL) term (the strength: larger is stronger). The authors' "
            "default is 0.01; the paper's CelebA models use 0.003, 0.01 and 0.02.",
        )
        k: int | None = Field(None, ge=1, description="Bottleneck width; None: half the feature dimension (paper).")
        sample_at_eval: bool = Field(
            False, description="Sample z at test time too (the authors' code) instead of releasing head(mu)."
        )
        epochs: int | None = Field(None, ge=1, description="Training epochs; None: the target recipe's.")
        lr: float | None = Field(None, gt=0.0, description="Adam learning rate; None: the target recipe's.")
        batch_size: int | None = Field(None, ge=1, description="Mini-batch size; None: the target recipe's.")

    name: ClassVar[str] = "mid"
    summary: ClassVar[str] = (
        "MID: a variational information bottleneck (mu, std -> z) before the head, loss CE + beta * KL; "
        "releases head(mu)."
    )
    paper: ClassVar[str] = "https://arxiv.org/abs/2009.05241"

    def build(self, ctx: DefenseContext) -> nn.Module:
        assert ctx.new_model is not None and ctx.data is not None
        shape = tuple(ctx.data.private_train[0].shape[1:])
        return VIBClassifier(ctx.new_model(), int(ctx.data.num_classes), shape, self.config.k,
                             self.config.sample_at_eval)

    def train(self, ctx: DefenseContext) -> nn.Module:
        hp = recipe_hparams(self.config, ctx)
        seed = self.training_seed(ctx)
        torch.manual_seed(seed)
        net = self.build(ctx)
        beta = float(self.config.beta)

        def loss(model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> Tensor:
            logits, mu, std = model.stochastic(x)  # type: ignore[operator]
            return F.cross_entropy(logits, y) + beta * information_loss(mu, std)

        fit(net, loss, ctx.data.private_train, seed=seed, **hp)
        return net

    def report(self) -> dict[str, Any]:
        return {"beta": float(self.config.beta)}


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(MID)
