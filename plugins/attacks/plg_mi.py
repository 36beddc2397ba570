"""PLG-MI: Pseudo-Label Guided Model Inversion (Yuan et al., AAAI 2023), https://arxiv.org/abs/2302.09814.

White-box, with a *conditional* prior (``plg-cgan``: a cGAN trained on public images pseudo-labelled by the
target). For each identity ``y`` and random start ``z ~ N(0, I)`` it minimises, over two random augmentations
``A_1, A_2`` of the generated image drawn anew each step,

    L(z) = sum_{i=1,2} max_margin(T(A_i(G(z, y))), y),   max_margin(l, y) = -l_y + max_{j != y} l_j

with Adam (lr 0.1) for 600 iterations (official ``reconstruct.py``). The augmentations are the official kornia
pipeline, :func:`invertkit.core.augment.plg_augment`: random resized crop (scale 0.8-1, aspect ratio 1, back
to the image size), colour jitter (brightness and contrast 0.2), horizontal flip (p 0.5) and rotation
(up to 5 degrees, p 0.5), drawn from a generator seeded by the attack's. PLG-MI uses no discriminator in this
stage. The prior must be conditional (``prior_requires``): ``check`` refuses another before any query and the
bench skips it, with the reason. ``loss`` may also be ``ce`` or ``poincare``,
the official alternatives.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core import losses
from invertkit.core.augment import plg_augment
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability as C, PriorFeature
from invertkit.core.interfaces.results import AttackResult
from invertkit.plugins.attacks.gan_search import search_latents

LOSSES = {"margin": losses.max_margin, "ce": losses.cross_entropy, "poincare": losses.poincare}


class PLGMI(Attack):
    name = "plg-mi"
    paper = "https://arxiv.org/abs/2302.09814"
    summary = "Pseudo-label guided MI: latent search in a conditional GAN, max-margin loss on augmented views, Adam."
    requires = frozenset({C.GRAD, C.LOGITS})
    prior_requires = frozenset({PriorFeature.CONDITIONAL})

    class Config(AttackConfig):
        iterations: int = Field(600, ge=1, description="Adam steps per latent (PLG-MI: 600)")
        lr: float = Field(0.1, gt=0, description="Adam learning rate (PLG-MI: 0.1)")
        views: int = Field(2, ge=1, le=32, description="augmented views of each image per step (PLG-MI: 2)")
        loss: Literal["margin", "ce", "poincare"] = Field("margin", description="identity loss (PLG-MI: margin)")
        augment: bool = Field(True, description="apply the random augmentations (PLG-MI: yes)")
        batch_size: int | None = Field(None, ge=1, description="latents optimised together (None: all at once)")

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        cfg = self.config
        loss_fn = LOSSES[cfg.loss]
        z0 = prior.sample_latent(len(labels), generator)
        y = labels.to(prior.device)
        aug_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))

        def objective(z: Tensor, idx: Tensor) -> Tensor:
            x = prior.decode(z, y[idx])
            total = torch.zeros(len(idx), device=x.device, dtype=x.dtype)
            for _ in range(cfg.views):
                v = plg_augment(x, aug_gen) if cfg.augment else x
                logits = target.logits(v)
                total = total + loss_fn(logits, y[idx].to(logits.device)).to(total.device)
            return total

        z, images, scores = search_latents(prior, z0, y, objective, batch_size=cfg.batch_size,
                                           iterations=cfg.iterations, lr=cfg.lr, optimizer="adam")
        return AttackResult(self.name, images, labels, scores, 0, 0.0, seed, {}, latents=z)


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(PLGMI)
