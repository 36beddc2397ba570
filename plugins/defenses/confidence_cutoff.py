"""``confidence-cutoff``: release only the confidences at or above a threshold ``tau``, renormalised.

The minimum-confidence filter of real prediction APIs: Amazon Rekognition's ``MinConfidence``
(https://docs.aws.amazon.com/rekognition/latest/APIReference/API_DetectLabels.html — "Amazon Rekognition
doesn't return any labels with confidence lower than this specified value"; 55 % by default) and the
score thresholds of other vision APIs; as a confidence-masking defense it is the threshold form of the
top-k restriction of Shokri et al. (S&P 2017, https://arxiv.org/abs/1610.05820).

Release: every confidence below ``tau`` becomes exactly zero, except the top class, which is always
released (a row never empties), and the kept values are scaled to sum to one, so their ratios and the label
are those of the undefended vector. ``tau >= 0.5`` therefore releases a one-hot label for every row (at most
one class can reach it). As deployed, an API releases no gradient; an adaptive attacker (``--adaptive``)
differentiates it by BPDA (the forward value is the cut vector, the backward pass that of the undefended one).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import OutputDefense


def cutoff(probs: Tensor, tau: float) -> Tensor:
    """Zero every entry below ``tau`` (keeping each row's largest), renormalise the rest."""
    p = probs.detach().clamp_min(0.0)
    keep = p >= tau
    keep = keep.scatter(1, p.argmax(dim=1, keepdim=True), True)
    kept = torch.where(keep, p, torch.zeros_like(p))
    return kept / kept.sum(dim=1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)


class ConfidenceCutoff(OutputDefense):
    """Release only confidences >= ``tau`` (and always the top one), renormalised."""

    class Config(ComponentConfig):
        tau: float = Field(
            0.1,
            ge=0.0,
            le=1.0,
            description="Confidences below tau are released as zero (the strength: larger is stronger). The top "
            "class is always kept; tau >= 0.5 releases a one-hot label. Amazon Rekognition's MinConfidence "
            "defaults to 0.55; 0.1 here keeps the runner-up classes of uncertain rows.",
        )

    name: ClassVar[str] = "confidence-cutoff"
    threat_model: ClassVar[str] = "output restriction"
    summary: ClassVar[str] = (
        "Zero confidences below tau (the top class always kept) and renormalise; an API: no gradients (adaptive: BPDA)."
    )
    paper: ClassVar[str] = "https://docs.aws.amazon.com/rekognition/latest/APIReference/API_DetectLabels.html"
    straight_through: ClassVar[bool] = True
    gradient: ClassVar[str] = "straight-through"

    def transform(self, probs: Tensor, generator: torch.Generator) -> Tensor:
        return cutoff(probs, float(self.config.tau))


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(ConfidenceCutoff)
