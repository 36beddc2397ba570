"""The ``random-prior`` baseline: samples of the prior, no optimisation, no query.

Always in the bench matrix, so a reader sees what an attack adds over what the public prior alone gives.
"""

from __future__ import annotations

import torch
from pydantic import Field

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.results import AttackResult


class RandomPrior(Attack):
    name = "random-prior"
    summary = "Baseline: decode random prior latents; uses no target access at all."
    requires = frozenset()

    class Config(AttackConfig):
        batch_size: int = Field(512, ge=1, description="latents decoded at once")

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        z = prior.sample_latent(len(labels), generator)
        with torch.no_grad():
            bs = self.config.batch_size
            y = labels.to(prior.device)
            images = torch.cat([prior.decode(z[i : i + bs], y[i : i + bs]) for i in range(0, len(z), bs)])
        return AttackResult(self.name, images, labels, torch.zeros(len(labels)), 0, 0.0, seed, {}, latents=z)


@hookimpl
def invertkit_register_attacks(register) -> None:
    register(RandomPrior)
