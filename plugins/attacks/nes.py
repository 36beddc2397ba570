"""NES: score-based black-box inversion in the prior's latent space.

The target is only queried for its confidence vector. The gradient of the identity loss
``-log p_y(G(z))`` w.r.t. z is estimated with natural evolution strategies (antithetic Gaussian
sampling; Ilyas et al., ICML 2018, https://arxiv.org/abs/1804.08598), as black-box MI attacks in the
latent space of a public GAN do; the prior term ``-D(G(z))`` is the attacker's own network and is
differentiated exactly. Every query is counted against the target's budget: ``2 * pairs`` per latent
per iteration.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.optim import nes_gradient, optimise


class NES(Attack):
    name = "nes"
    paper = "https://arxiv.org/abs/1804.08598"
    summary = "Black-box (scores): NES gradient estimates of the identity loss in a GAN prior's latent space."
    requires = frozenset({C.PROBS})

    class Config(AttackConfig):
        iterations: int = Field(200, ge=1, description="optimisation steps")
        pairs: int = Field(10, ge=1, description="antithetic sample pairs per step (2*pairs queries per latent)")
        sigma: float = Field(0.1, gt=0, description="NES smoothing radius in latent space")
        lr: float = Field(0.05, gt=0, description="Adam step size")
        prior_weight: float = Field(0.01, ge=0, description="weight of the (exact) prior loss -D(G(z))")
        clip: float | None = Field(1.5, gt=0, description="z clamped to [-clip, clip] after each step")

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        cfg = self.config
        z0 = prior.sample_latent(len(labels), generator)
        y = labels.to(prior.device)

        def estimate(z: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            reps = 2 * cfg.pairs
            yy = y[idx].repeat_interleave(reps)

            def identity_loss(zz: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return F.nll_loss(target.log_probs(prior.decode(zz, yy)), yy, reduction="none")

            loss, grad = nes_gradient(identity_loss, z, sigma=cfg.sigma, pairs=cfg.pairs, generator=generator)
            if cfg.prior_weight > 0 and prior.has_discriminator:
                zz = z.detach().requires_grad_(True)
                realism = prior.realism(prior.decode(zz, y[idx]))
                (g_prior,) = torch.autograd.grad(-cfg.prior_weight * realism.sum(), zz)
                grad = grad + g_prior
                loss = loss - cfg.prior_weight * realism.detach()
            return loss, grad

        out = optimise(
            z0,
            iterations=cfg.iterations,
            lr=cfg.lr,
            optimizer="adam",
            estimate=estimate,
            project=(lambda z: z.clamp(-cfg.clip, cfg.clip)) if cfg.clip is not None else None,
        )
        with torch.no_grad():
            images = prior.decode(out.params, y)
        return AttackResult(self.name, images, labels, -out.loss.cpu(), 0, 0.0, seed, {}, latents=out.params)


@hookimpl
def invertkit_register_attacks(register) -> None:
    register(NES)
