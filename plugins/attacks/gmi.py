"""GMI: The Secret Revealer (Zhang et al., CVPR 2020), https://arxiv.org/abs/1911.07135.

White-box, GAN prior. For each identity y and random start z ~ N(0, I), minimise

    L(z) = -D(G(z)) + lambda * CE(T(G(z)), y)            (lambda = 100)

with momentum SGD (Nesterov form, lr 0.02, momentum 0.9) for 1,500 iterations, clipping z to
[-1, 1] after every step; 5 random restarts per identity. GMI averages the loss over a batch of 60
identities, so each latent moves by lr/60 times its own gradient: ``loss_batch`` keeps that scaling
whatever number of latents invertkit runs together (all identities x restarts in one batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.optim import batched, optimise


class GMI(Attack):
    name = "gmi"
    paper = "https://arxiv.org/abs/1911.07135"
    summary = "Generative model inversion: GAN-prior latent search, -D(G(z)) + lambda*CE, momentum SGD."
    requires = frozenset({C.GRAD, C.PROBS})

    class Config(AttackConfig):
        iterations: int = Field(1500, ge=1, description="optimisation steps per latent (paper: 1500)")
        lr: float = Field(0.02, gt=0, description="step size (paper: 0.02)")
        momentum: float = Field(0.9, ge=0, lt=1, description="momentum (paper: 0.9)")
        lam: float = Field(100.0, ge=0, description="weight of the identity (CE) loss (paper: 100)")
        prior_weight: float = Field(1.0, ge=0, description="weight of the prior loss -D(G(z))")
        clip: float | None = Field(1.0, gt=0, description="z is clamped to [-clip, clip] after each step (paper: 1)")
        loss_batch: int = Field(60, ge=1, description="GMI's loss-averaging batch; gradient scale is 1/loss_batch")
        batch_size: int | None = Field(None, ge=1, description="latents optimised together (None: all at once)")

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        cfg = self.config
        z0 = prior.sample_latent(len(labels), generator)
        if cfg.clip is not None:
            z0 = z0.clamp(-cfg.clip, cfg.clip)
        device_labels = labels.to(prior.device)

        def objective(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            x = prior.decode(z, device_labels[idx])
            iden = F.nll_loss(target.log_probs(x), device_labels[idx], reduction="none")
            loss = cfg.lam * iden
            if cfg.prior_weight > 0 and prior.has_discriminator:
                loss = loss - cfg.prior_weight * prior.realism(x)
            return loss

        project = (lambda z: z.clamp(-cfg.clip, cfg.clip)) if cfg.clip is not None else None
        zs, losses = [], []
        for sl in batched(len(labels), cfg.batch_size):
            idx_offset = sl.start
            out = optimise(
                z0[sl],
                iterations=cfg.iterations,
                lr=cfg.lr,
                momentum=cfg.momentum,
                optimizer="nesterov",
                loss_scale=1.0 / cfg.loss_batch,
                objective=lambda z, idx, o=idx_offset: objective(z, idx + o),
                project=project,
            )
            zs.append(out.params)
            losses.append(out.loss)
        z = torch.cat(zs)
        with torch.no_grad():
            images = prior.decode(z, device_labels)
        return AttackResult(self.name, images, labels, -torch.cat(losses).cpu(), 0, 0.0, seed, {}, latents=z)


@hookimpl
def invertkit_register_attacks(register) -> None:
    register(GMI)
