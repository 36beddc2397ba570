"""``gaussian-noise``: perturb the released confidence vector with bounded Gaussian noise in log space.

Output perturbation in the family of MemGuard (Jia et al., CCS 2019, https://arxiv.org/abs/1909.10594), which
adds noise to each released confidence vector; here the noise is random rather than adversarially crafted:

    released = softmax(log(max(p, 1e-12)) + clamp(N(0, sigma^2), -clip*sigma, clip*sigma))

Promise: every log-confidence moves by at most ``clip * sigma``, so the label is kept whenever the top-1
log-confidence exceeds the runner-up's by more than ``2 * clip * sigma`` (log-confidences floored at
``log(1e-12)``). The transform is differentiable: gradients are exact (through the noisy vector).
Noise comes from the defended target's seeded generator, so a defended target is reproducible.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import OutputDefense

#: confidences are floored here before the log
FLOOR = 1e-12


class GaussianNoise(OutputDefense):
    """Add clipped Gaussian noise to the log-confidences, then renormalise (softmax)."""

    class Config(ComponentConfig):
        sigma: float = Field(
            0.5,
            ge=0.0,
            description="Standard deviation of the noise added to each log-confidence (the strength: larger is "
            "stronger); 0 releases the undefended vector.",
        )
        clip: float = Field(
            3.0,
            ge=0.0,
            description="Noise is clipped to +/- clip*sigma, so each log-confidence moves by at most clip*sigma "
            "and the label is kept whenever the top-1/top-2 log-confidence margin exceeds 2*clip*sigma.",
        )

    name: ClassVar[str] = "gaussian-noise"
    threat_model: ClassVar[str] = "output perturbation"
    summary: ClassVar[str] = (
        "Add clipped N(0, sigma^2) noise to log-confidences and renormalise; label kept when the log margin "
        "exceeds 2*clip*sigma; exact gradients."
    )
    paper: ClassVar[str] = "https://arxiv.org/abs/1909.10594"
    straight_through: ClassVar[bool] = False
    gradient: ClassVar[str] = "exact"

    @property
    def bound(self) -> float:
        """The largest change of any log-confidence: ``clip * sigma``."""
        return float(self.config.clip) * float(self.config.sigma)

    def transform(self, probs: Tensor, generator: torch.Generator) -> Tensor:
        sigma, bound = float(self.config.sigma), self.bound
        noise = torch.randn(tuple(probs.shape), generator=generator, dtype=torch.float64) * sigma
        noise = noise.clamp(-bound, bound).to(device=probs.device, dtype=probs.dtype)
        return torch.softmax(torch.log(probs.clamp_min(FLOOR)) + noise, dim=1)


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(GaussianNoise)
