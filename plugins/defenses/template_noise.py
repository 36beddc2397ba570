"""``template-noise``: Gaussian noise on released templates (feature vectors).

The simplest template perturbation against template inversion — the attack of Mai et al., "On the
Reconstruction of Face Images from Deep Face Templates" (IEEE TPAMI 2019, https://arxiv.org/abs/1703.00832),
which the paper link points to as the threat — in the output-perturbation family of embedding privacy: every
``features()`` answer is released as

    f + sigma * rms(f) * N(0, I)        (relative = true: the noise scales with each template's RMS value)
    f + sigma * N(0, I)                 (relative = false)

with fresh noise for every query, from the defended target's seeded generator (a defended target is
reproducible). Other capabilities pass through unchanged; ``weights`` is removed (the raw extractor would
bypass the noise). The noise is additive, so gradients through ``features`` are exact.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.capability import Capabilities, Capability
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import Defense, DefenseContext
from invertkit.core.interfaces.target import Restricted, TargetModel

C = Capability


class NoisyTemplateTarget(Restricted):
    """A target whose ``features()`` carry Gaussian noise."""

    def __init__(self, inner: TargetModel, defense: "TemplateNoise", seed: int) -> None:
        super().__init__(inner, defense.capabilities(inner.capabilities), budget=inner.budget,
                         name=f"{inner.name}+{defense.name}")
        self.defense = defense
        self.generator = torch.Generator().manual_seed(int(seed) + 6007)

    def _features(self, x: Tensor) -> Tensor:
        f = self._inner.features(x)
        cfg = self.defense.config
        noise = torch.randn(tuple(f.shape), generator=self.generator, dtype=torch.float64)
        noise = noise.to(device=f.device, dtype=f.dtype) * float(cfg.sigma)
        if cfg.relative:
            rms = f.detach().reshape(len(f), -1).pow(2).mean(dim=1).sqrt()
            noise = noise * rms.view(-1, *([1] * (f.dim() - 1)))
        return f + noise


class TemplateNoise(Defense):
    """Release ``features()`` with additive Gaussian noise."""

    class Config(ComponentConfig):
        sigma: float = Field(
            0.5,
            ge=0.0,
            description="Noise standard deviation (the strength: larger is stronger); relative to each template's "
            "RMS value when `relative`, else in feature units. 0 releases the template unchanged.",
        )
        relative: bool = Field(True, description="Scale the noise by each template's RMS value.")

    name: ClassVar[str] = "template-noise"
    threat_model: ClassVar[str] = "template protection"
    kind = "output"
    summary: ClassVar[str] = "Add Gaussian noise (sigma, relative to the template's RMS) to every released template."
    paper: ClassVar[str] = "https://arxiv.org/abs/1703.00832"
    gradient: ClassVar[str] = "exact"

    def capabilities(self, given: Capabilities) -> Capabilities:
        return frozenset(given) - {C.WEIGHTS}

    def apply(self, target: TargetModel, ctx: DefenseContext | None = None) -> TargetModel:
        return NoisyTemplateTarget(target, self, seed=ctx.seed if ctx is not None else 0)

    def report(self) -> dict[str, Any]:
        return {"sigma": self.config.sigma, "relative": self.config.relative}


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(TemplateNoise)
