"""``mid``: Mutual Information regularisation based Defense, Wang et al., "Improving Robustness to Model
Inversion Attacks via Mutual Information Regularization" (AAAI 2021, https://arxiv.org/abs/2009.05241).

MID bounds the information the prediction carries about the input with a variational information bottleneck
(Alemi et al.) between the feature extractor and the classifier head. Follows the authors' code,
Jiachen-T-Wang/mi-defense, ``gmi/target/model.py`` (``VGG16_vib``, ``forward`` and ``predict``),
``gmi/target/engine.py`` (``train_vib``) and ``gmi/target/train_vib.py`` (the same model is ``MCNN_vib`` /
``VGG16_vib`` in AlanPeng0897/Defend_MI ``BiDO/model.py``): the penultimate features ``f`` (dimension ``d``)
go through a linear layer to ``2k`` statistics (``k = d / 2``), ``mu`` = the first ``k``,
``std = softplus(s - 5)`` from the rest, and the head classifies ``z = mu + std * eps`` (``eps ~ N(0, I)``).
The loss is

    CE(head(z), y) + beta * KL(N(mu, std^2) || N(0, I)),   KL = -1/2 * sum(1 + 2 log std - mu^2 - std^2)

averaged over the batch.

Prediction (``predict``): the authors' released model samples at test time too — both ``forward`` and
``predict`` of ``VGG16_vib`` draw one fresh ``eps`` per call (one sample, no averaging over several), in
eval mode as in training. That is the default here (``predict = "sample"``): the defended network is
stochastic even in eval mode, each call draws ``eps`` from torch's global generator (seed it for a
reproducible run), and two forward passes over the same images differ. ``predict = "mean"`` releases the
deterministic ``head(mu)`` instead (the bottleneck's mean, as Alemi et al.'s VIB is often evaluated): kept
as an option because a deterministic target gives repeatable attack results and a slightly higher natural
accuracy, at the price of not being the model the paper attacked. ``features()`` of the defended target is
what the head classifies: a fresh ``z`` under ``"sample"``, ``mu`` under ``"mean"`` (so ``head(features(x))``
is a forward pass either way; the authors' model also returns the pre-bottleneck ``f``, which is not
exposed here).

``beta`` is the strength: the authors' ``gmi/target/train_vib.py`` sets 0.003, the default here (the paper's
CelebA models use 0.003, 0.01 and 0.02; Defend_MI's ``engine.train_vib`` defaults to 0.01).

Deliberate differences from the authors' code: the optimiser, epochs and batch size are the target recipe's
(theirs: SGD lr 1e-2, momentum 0.9, weight decay 1e-4, 50 epochs, batch 64, keeping the best test-accuracy
epoch); ``log std`` is clamped at ``1e-12`` in the KL term (theirs is unguarded).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.defense import DefenseContext
from invertkit.core.interfaces.target import split_classifier
from invertkit.core.zoo.defended_training import DefenseTraining, RecipeOverrides


class VIBClassifier(nn.Module):
    """``base``'s feature extractor, a stochastic bottleneck ``(mu, std) -> z`` and a linear head on ``z``."""

    def __init__(self, base: nn.Module, num_classes: int, input_shape: tuple[int, ...], k: int | None = None,
                 predict: str = "sample") -> None:
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
        if predict not in ("sample", "mean"):
            raise UsageError(f"mid: predict must be 'sample' or 'mean', not {predict!r}")
        #: ``"sample"``: eval-mode passes sample ``z`` too (the authors' model); ``"mean"``: they use ``mu``
        self.predict = predict

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
        """The bottleneck the head classifies: ``mu + std * eps`` (training, or ``predict = "sample"``; a fresh
        ``eps`` from torch's global generator each call), else ``mu``."""
        mu, std = self.statistics(x)
        if self.training or self.predict == "sample":
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

    class Config(RecipeOverrides):
        beta: float = Field(
            0.003,
            ge=0.0,
            description="Weight of the information (KL) term (the strength: larger is stronger). The authors' "
            "train_vib.py: 0.003; the paper's CelebA models use 0.003, 0.01 and 0.02.",
        )
        k: int | None = Field(None, ge=1, description="Bottleneck width; None: half the feature dimension (paper).")
        predict: Literal["sample", "mean"] = Field(
            "sample",
            description="'sample': the released model samples z = mu + std * eps at test time too, one sample per "
            "call (the authors' code; stochastic); 'mean': it classifies mu (deterministic).",
        )

    name: ClassVar[str] = "mid"
    threat_model: ClassVar[str] = "training-time"
    summary: ClassVar[str] = (
        "MID: a variational information bottleneck (mu, std -> z) before the head, loss CE + beta * KL; "
        "the released model samples z at prediction too (the authors' code)."
    )
    paper: ClassVar[str] = "https://arxiv.org/abs/2009.05241"

    def build(self, ctx: DefenseContext) -> nn.Module:
        assert ctx.new_model is not None and ctx.data is not None
        shape = tuple(ctx.data.private_train[0].shape[1:])
        return VIBClassifier(ctx.new_model(), int(ctx.data.num_classes), shape, self.config.k,
                             self.config.predict)

    def train(self, ctx: DefenseContext) -> nn.Module:
        hp, net = self.start(ctx)
        beta = float(self.config.beta)

        def loss(model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> Tensor:
            logits, mu, std = model.stochastic(x)  # type: ignore[operator]
            return F.cross_entropy(logits, y) + beta * information_loss(mu, std)

        return self.fit_private(ctx, net, loss, hp)

    def report(self) -> dict[str, Any]:
        return {"beta": float(self.config.beta), "predict": self.config.predict}


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(MID)
