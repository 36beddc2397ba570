"""``top-k``: release only the ``k`` largest confidences of each row, renormalised.

The "restrict the prediction vector to the top k classes" mitigation of Shokri et al. (S&P 2017,
https://arxiv.org/abs/1610.05820). Every other class is released as exactly zero; the kept ones are scaled
to sum to one, so their ratios (and the label) are those of the undefended vector.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import OutputDefense


class TopK(OutputDefense):
    """Keep the ``k`` largest confidences of each row, zero the rest, renormalise."""

    class Config(ComponentConfig):
        k: int = Field(
            1,
            ge=1,
            description="Number of classes whose confidence is released (the strength: smaller is stronger); "
            "the others are zeroed and the kept ones renormalised to sum to one. k=1 releases a one-hot label.",
        )

    name: ClassVar[str] = "top-k"
    threat_model: ClassVar[str] = "output perturbation"
    summary: ClassVar[str] = "Release only the k largest confidences (renormalised); an API: no gradients (an adaptive attacker gets BPDA)."
    paper: ClassVar[str] = "https://arxiv.org/abs/1610.05820"
    straight_through: ClassVar[bool] = True
    gradient: ClassVar[str] = "straight-through"

    def transform(self, probs: Tensor, generator: torch.Generator) -> Tensor:
        p = probs.detach().clamp_min(0.0)
        k = max(1, min(int(self.config.k), p.shape[1]))
        values, indices = torch.topk(p, k, dim=1)
        kept = torch.zeros_like(p).scatter(1, indices, values)
        return kept / kept.sum(dim=1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(TopK)
