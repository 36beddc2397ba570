"""``nls``: negative label smoothing, Struppek et al., "Be Careful What You Smooth For: Label Smoothing Can Be
a Privacy Shield but Also a Catalyst for Model Inversion Attacks" (ICLR 2024,
https://arxiv.org/abs/2310.06549).

Label smoothing trains on the soft targets ``t = (1 - alpha) * onehot(y) + alpha / K``. Struppek et al. show
that positive ``alpha`` makes a model *more* vulnerable to model inversion, while a *negative* ``alpha``
(the target class pushed above 1, the others below 0) hinders it: the confidences saturate, so the attack's
gradient signal around a class vanishes. The loss is the cross-entropy with the soft targets,
``-sum_c t_c log p_c`` (the official ``losses/label_smoothing.py``: ``(1 - alpha) * NLL + alpha * mean_c
(-log p_c)``, the same quantity).

Follows the authors' code, LukasStruppek/Plug-and-Play-Attacks (the ICLR 2024 update), ``train_model.py``
(``ls_scheduler``, used whenever ``label_smoothing < 0``) and ``losses/label_smoothing.py``. Its schedule, for
its 100-epoch face-recognition runs, is: no smoothing for epochs 0-49, then ``alpha * (e + 1 - 50) /
(n_epochs - 50)`` for epochs 50-74 (a linear ramp reaching only ``alpha / 2`` at epoch 74), then a step to the
full ``alpha`` from epoch 75 on. Here (``schedule = "official"``, the default) the same shape is expressed as
fractions of the configured epochs ``E``, so a CPU-sized run keeps it: with ``start = round(warmup * E)``
and ``end = round((warmup + ramp) * E)``,

    factor(e) = 0                                    for e < start
              = alpha * (e + 1 - start) / (E - start)  for start <= e < end
              = alpha                                for e >= end

with the official ``warmup = 0.5``, ``ramp = 0.25`` (``E = 100`` gives exactly the official 50 / 75 epochs).

Deliberate differences from the official code:

* the epoch boundaries are fractions of the configured epochs (the official ones are the absolute epochs
  50 and 75, which only make sense for its 100-epoch runs; a 10-epoch run of the official code would
  never smooth). Rounding is half-up.
* ``schedule = "linear"`` is kept as an option: this module's earlier schedule, a linear ramp from 0 after
  ``warmup`` that reaches the full ``alpha`` at ``warmup + ramp`` (no step); with its old defaults
  ``warmup = 0.25``, ``ramp = 0.25`` it reaches ``alpha`` at half the epochs. It is not the paper's: use it
  only to reproduce earlier runs (set ``warmup``/``ramp`` explicitly).
* the optimiser and learning-rate schedule are the target recipe's (the official runs: Adam 1e-3,
  MultiStepLR at epochs 75 and 90, batch 128) — the defense changes only the loss.

``alpha`` is the strength (more negative is stronger); the paper's face-recognition models use -0.05.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.defense import DefenseContext
from invertkit.core.zoo.defended_training import DefenseTraining, RecipeOverrides


def _boundary(fraction: float, epochs: int) -> int:
    """``fraction * epochs`` rounded half-up (so 22.5 is 23, not Python's banker's 22)."""
    return int(math.floor(fraction * epochs + 0.5))


def smoothing_factor(epoch: int, epochs: int, alpha: float, warmup: float, ramp: float,
                     schedule: str = "official") -> float:
    """The label-smoothing factor of ``epoch`` (0-based) of ``epochs``.

    ``"official"`` (the authors' ``ls_scheduler``, scaled to ``epochs``): 0 before ``start = warmup * E``,
    ``alpha * (epoch + 1 - start) / (E - start)`` until ``end = (warmup + ramp) * E``, ``alpha`` from ``end``.
    ``"linear"``: 0 before ``start``, a linear ramp reaching ``alpha`` at ``end`` (``ramp = 0``: a step)."""
    start = _boundary(warmup, epochs)
    end = max(start, _boundary(warmup + ramp, epochs))
    if epoch < start:
        return 0.0
    if epoch >= end:
        return alpha
    if schedule == "official":
        return alpha * (epoch - start + 1) / max(1, epochs - start)
    if schedule == "linear":
        return alpha * min(1.0, (epoch - start + 1) / (end - start))
    raise ValueError(f"nls: unknown schedule {schedule!r}")


def smoothed_cross_entropy(logits: Tensor, y: Tensor, alpha: float) -> Tensor:
    """``-sum_c t_c log softmax(logits)_c`` with ``t = (1 - alpha) onehot(y) + alpha / K`` (any real alpha)."""
    k = logits.shape[1]
    logp = F.log_softmax(logits, dim=1)
    target = F.one_hot(y, k).to(logp.dtype) * (1.0 - alpha) + alpha / k
    return -(target * logp).sum(dim=1).mean()


class NLS(DefenseTraining):
    """Train the target with (negative) label smoothing under a warm-up schedule."""

    class Config(RecipeOverrides):
        alpha: float = Field(
            -0.05,
            ge=-1.0,
            le=1.0,
            description="Label-smoothing factor reached after the warm-up (the strength: more negative is stronger; "
            "positive values smooth, which the paper shows helps the attacker). Paper: -0.05.",
        )
        schedule: Literal["official", "linear"] = Field(
            "official",
            description="'official': the authors' ls_scheduler as fractions of the epochs (0 until warmup, a ramp "
            "reaching alpha/2 at warmup+ramp with the defaults, then a step to alpha); 'linear': this module's "
            "earlier schedule (a linear ramp reaching alpha at warmup+ramp; not the paper's).",
        )
        warmup: float = Field(
            0.5, ge=0.0, le=1.0, description="Fraction of the epochs trained without smoothing. Official: 0.5 (50 of 100)."
        )
        ramp: float = Field(
            0.25, ge=0.0, le=1.0,
            description="Fraction of the epochs of the ramp; alpha in full after warmup + ramp. Official: 0.25 "
            "(epochs 50-74 of 100).",
        )

    name: ClassVar[str] = "nls"
    threat_model: ClassVar[str] = "training-time"
    summary: ClassVar[str] = (
        "Negative label smoothing (soft targets (1 - alpha) onehot + alpha / K, alpha < 0) on the authors' "
        "schedule: none for the first half of the epochs, a ramp to alpha/2, alpha from 75%."
    )
    paper: ClassVar[str] = "https://arxiv.org/abs/2310.06549"

    def train(self, ctx: DefenseContext) -> nn.Module:
        cfg = self.config
        hp, net = self.start(ctx)
        epochs = int(hp["epochs"])

        def loss(model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> Tensor:
            a = smoothing_factor(epoch, epochs, float(cfg.alpha), float(cfg.warmup), float(cfg.ramp), cfg.schedule)
            return smoothed_cross_entropy(model(x), y, a)

        return self.fit_private(ctx, net, loss, hp)

    def report(self) -> dict[str, Any]:
        return {"alpha": float(self.config.alpha), "schedule": self.config.schedule}


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(NLS)
