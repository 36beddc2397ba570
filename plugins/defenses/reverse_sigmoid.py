"""``reverse-sigmoid``: the deceptive perturbation of Lee et al., "Defending Against NN Model Stealing Attacks
Using Deceptive Perturbations" (IEEE S&P Workshops 2019, https://arxiv.org/abs/1806.00054).

Each confidence ``p`` is perturbed by the reverse sigmoid

    r(p) = beta * (s(gamma * s^-1(p)) - 1/2),      s the logistic sigmoid, s^-1(p) = log(p / (1 - p)),

and the released vector is ``q = alpha * max(p - r(p), 0)`` with ``alpha`` normalising the row (Eq. 3-4 of
the paper). With ``gamma < 1`` the perturbation pulls every confidence towards 1/2 and, near zero, maps
vanishing confidences up to about ``beta / 2`` *non-monotonically*: the released scores and their gradients
point the wrong way for anyone optimising through them, while the ranking of large confidences is kept.
``p`` is clipped to ``[1e-9, 1 - 1e-9]`` first and the arithmetic is done in float64.

Label: the raw transform does *not* guarantee the top-1 label (a large ``beta`` can lift a near-zero
confidence above the top one). With ``preserve_top1`` (default) the released values of the original top
class and the new arg-max are swapped when they differ, so the label is always the undefended one (the
paper's stated goal: perturbations that keep the top-1 prediction).

Defaults ``beta = 1.0``, ``gamma = 0.1`` are those of IBM ART's ``ReverseSigmoid`` post-processor. The
transform is differentiable almost everywhere: gradients are exact (through the deceptive vector).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import OutputDefense

#: confidences are clipped to [CLIP, 1 - CLIP] before the inverse sigmoid
CLIP = 1e-9


def reverse_sigmoid(probs: Tensor, beta: float, gamma: float, *, preserve_top1: bool = True) -> Tensor:
    """The released vector ``alpha * max(p - beta * (s(gamma * logit(p)) - 1/2), 0)`` (row-normalised)."""
    p = probs.to(torch.float64).clamp(CLIP, 1.0 - CLIP)
    r = beta * (torch.sigmoid(gamma * torch.log(p / (1.0 - p))) - 0.5)
    q = (p - r).clamp_min(0.0)
    total = q.sum(dim=1, keepdim=True)
    # a row can only vanish when beta is huge; it then falls back to the clipped input
    q = torch.where(total > 0, q / total.clamp_min(torch.finfo(torch.float64).tiny), p / p.sum(1, keepdim=True))
    if preserve_top1:
        top = probs.detach().argmax(dim=1, keepdim=True)
        now = q.detach().argmax(dim=1, keepdim=True)
        q_top, q_now = q.gather(1, top), q.gather(1, now)
        q = q.scatter(1, now, q_top).scatter(1, top, q_now)  # a swap; a no-op where top == now
    return q.to(probs.dtype)


class ReverseSigmoid(OutputDefense):
    """Release ``alpha * max(p - beta * (sigmoid(gamma * logit(p)) - 1/2), 0)``."""

    class Config(ComponentConfig):
        beta: float = Field(
            1.0,
            ge=0.0,
            description="Magnitude of the reverse-sigmoid perturbation (the strength: larger is stronger); 0 "
            "releases the undefended vector. IBM ART's default is 1.0.",
        )
        gamma: float = Field(
            0.1,
            gt=0.0,
            description="Slope inside the sigmoid: gamma < 1 flattens the released vector and lifts vanishing "
            "confidences non-monotonically (the deception); gamma = 1 makes r(p) = beta*(p - 1/2). ART's default "
            "is 0.1.",
        )
        preserve_top1: bool = Field(
            True,
            description="Swap the released values of the undefended top class and the new arg-max when they "
            "differ, so the released label is always the undefended one.",
        )

    name: ClassVar[str] = "reverse-sigmoid"
    threat_model: ClassVar[str] = "output perturbation"
    summary: ClassVar[str] = (
        "Lee et al.'s deceptive reverse-sigmoid perturbation of the confidences (beta, gamma); top-1 kept by a "
        "swap; exact gradients through the perturbed vector."
    )
    paper: ClassVar[str] = "https://arxiv.org/abs/1806.00054"
    straight_through: ClassVar[bool] = False
    gradient: ClassVar[str] = "exact"

    def transform(self, probs: Tensor, generator: torch.Generator) -> Tensor:
        cfg = self.config
        return reverse_sigmoid(probs, float(cfg.beta), float(cfg.gamma), preserve_top1=bool(cfg.preserve_top1))


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(ReverseSigmoid)
