"""``rounding``: release confidences rounded to ``decimals`` decimal places.

The countermeasure of Fredrikson et al. (CCS 2015, https://doi.org/10.1145/2810103.2813677), also evaluated
against membership inference by Shokri et al. (S&P 2017, https://arxiv.org/abs/1610.05820).

Rounding is done by the *largest-remainder* (Hamilton) method, so every released row is still an exact
distribution on the grid of ``unit = 10**-decimals``: each value is a non-negative multiple of ``unit`` and the
row sums to one. Each value moves by less than one unit, hence the label is kept whenever the top-1 confidence
exceeds the runner-up by more than one unit. With ``decimals=0`` the release is the one-hot of the label.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import OutputDefense


def largest_remainder_round(probs: Tensor, decimals: int) -> Tensor:
    """Round each row of ``probs`` to multiples of ``10**-decimals`` keeping the row sum at exactly one unit
    count (Hamilton's method: floor everything, then hand the missing units to the largest remainders;
    ties go to the lower class index)."""
    total = 10 ** int(decimals)
    p = probs.detach().to(torch.float64).clamp_min(0.0)
    p = p / p.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    scaled = p * total
    units = torch.floor(scaled)
    remainder = scaled - units
    missing = (total - units.sum(dim=1)).round().clamp(0, p.shape[1]).long()  # < num_classes by construction
    order = torch.sort(remainder, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(p.shape[1], device=p.device).expand_as(order))
    units = units + (rank < missing.unsqueeze(1)).to(units.dtype)
    return (units / total).to(probs.dtype)


class Rounding(OutputDefense):
    """Round released confidences to ``decimals`` decimal places (largest-remainder rounding)."""

    class Config(ComponentConfig):
        decimals: int = Field(
            2,
            ge=0,
            le=6,
            description="Decimal places kept in each released confidence (the strength: fewer is stronger). "
            "Values are multiples of 10**-decimals and rows still sum to one; 0 releases a one-hot label.",
        )

    name: ClassVar[str] = "rounding"
    threat_model: ClassVar[str] = "output perturbation"
    summary: ClassVar[str] = (
        "Round confidences to `decimals` places (largest-remainder, rows stay exact distributions); "
        "an API: no gradients (an adaptive attacker gets BPDA)."
    )
    paper: ClassVar[str] = "https://doi.org/10.1145/2810103.2813677"
    straight_through: ClassVar[bool] = True
    gradient: ClassVar[str] = "straight-through"

    @property
    def unit(self) -> float:
        return 10.0 ** -int(self.config.decimals)

    def transform(self, probs: Tensor, generator: torch.Generator) -> Tensor:
        return largest_remainder_round(probs, int(self.config.decimals))


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(Rounding)
