"""``nls``: negative label smoothing, Struppek et al., "Be Careful What You Smooth For: Label Smoothing Can Be
a Privacy Shield but Also a Catalyst for Model Inversion Attacks" (ICLR 2024,
https://arxiv.org/abs/2310.06549).

Label smoothing trains on the soft targets ``t = (1 - alpha) * onehot(y) + alpha / K``. Struppek et al. show
that positive ``alpha`` makes a model *more* vulnerable to model inversion, while a *negative* ``alpha``
(the target class pushed above 1, the others below 0) hinders it: the confidences saturate, so the attack's
gradient signal around a class vanishes. The loss is the cross-entropy with the soft targets,
``-sum_c t_c log p_c``.

Training with a negative factor from the start hampers convergence, so the smoothing factor follows a
warm-up schedule: 0 for the first ``warmup`` fraction of the epochs, then a linear ramp over the next
``ramp`` fraction to ``alpha``, then ``alpha`` until the end (``ramp = 0``: a step to ``alpha``).
``alpha`` is the strength (more negative is stronger); the paper's face-recognition models use -0.05.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import DefenseContext
from invertkit.core.zoo.defended_training import DefenseTraining, fit, recipe_hparams


def smoothing_factor(epoch: int, epochs: int, alpha: float, warmup: float, ramp: float) -> float:
    """The label-smoothing factor of ``epoch`` (0-based) under the warm-up schedule."""
    start = int(round(warmup * epochs))
    length = int(round(ramp * epochs))
    if epoch < start:
        return 0.0
    if length <= 0:
        return alpha
    return alpha * min(1.0, (epoch - start + 1) / length)


def smoothed_cross_entropy(logits: Tensor, y: Tensor, alpha: float) -> Tensor:
    """``-sum_c t_c log softmax(logits)_c`` with ``t = (1 - alpha) onehot(y) + alpha / K`` (any real alpha)."""
    k = logits.shape[1]
    logp = F.log_softmax(logits, dim=1)
    target = F.one_hot(y, k).to(logp.dtype) * (1.0 - alpha) + alpha / k
    return -(target * logp).sum(dim=1).mean()


class NLS(DefenseTraining):
    """Train the target with (negative) label smoothing under a warm-up schedule."""

    class Config(ComponentConfig):
        alpha: float = Field(
            -0.05,
            ge=-1.0,
            le=1.0,
            description="Label-smoothing factor reached after the warm-up (the strength: more negative is stronger; "
            "positive values smooth, which the paper shows helps the attacker). Paper: -0.05.",
        )
        warmup: float = Field(0.25, ge=0.0, le=1.0, description="Fraction of the epochs trained without smoothing.")
        ramp: float = Field(
            0.25, ge=0.0, le=1.0, description="Fraction of the epochs over which the factor ramps linearly to alpha."
        )
        epochs: int | None = Field(None, ge=1, description="Training epochs; None: the target recipe's.")
        lr: float | None = Field(None, gt=0.0, description="Adam learning rate; None: the target recipe's.")
        batch_size: int | None = Field(None, ge=1, description="Mini-batch size; None: the target recipe's.")

    name: ClassVar[str] = "nls"
    summary: ClassVar[str] = (
        "Negative label smoothing (soft targets (1 - alpha) onehot + alpha / K, alpha < 0) after a warm-up "
        "without smoothing."
    )
    paper: ClassVar[str] = "https://arxiv.org/abs/2310.06549"

    def train(self, ctx: DefenseContext) -> nn.Module:
        cfg = self.config
        hp = recipe_hparams(cfg, ctx)
        seed = self.training_seed(ctx)
        torch.manual_seed(seed)
        net = ctx.new_model()  # type: ignore[misc]
        epochs = int(hp["epochs"])

        def loss(model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> Tensor:
            a = smoothing_factor(epoch, epochs, float(cfg.alpha), float(cfg.warmup), float(cfg.ramp))
            return smoothed_cross_entropy(model(x), y, a)

        fit(net, loss, ctx.data.private_train, seed=seed, **hp)
        return net

    def report(self) -> dict[str, Any]:
        return {"alpha": float(self.config.alpha)}


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(NLS)
