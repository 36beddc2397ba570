"""PLG-MI: Pseudo-Label Guided Model Inversion (Yuan et al., AAAI 2023), https://arxiv.org/abs/2302.09814.

White-box, with a *conditional* prior (``plg-cgan``: a cGAN trained on public images pseudo-labelled by the
target). For each identity ``y`` and random start ``z ~ N(0, I)`` it minimises, over two random augmentations
``A_1, A_2`` of the generated image drawn anew each step,

    L(z) = sum_{i=1,2} max_margin(T(A_i(G(z, y))), y),   max_margin(l, y) = -l_y + max_{j != y} l_j

with Adam (lr 0.1) for 600 iterations (official ``reconstruct.py``). The augmentations (kornia in the official
code) are re-implemented here in differentiable torch: random resized crop (scale 0.8-1, aspect ratio 1, back
to the image size), colour jitter (brightness and contrast 0.2), horizontal flip (p 0.5) and rotation
(up to 5 degrees). PLG-MI uses no discriminator in this stage. ``loss`` may also be ``ce`` or ``poincare``,
the official alternatives.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from invertkit.core import losses
from invertkit.core.errors import UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.optim import batched, optimise

LOSSES = {"margin": losses.max_margin, "ce": losses.cross_entropy, "poincare": losses.poincare}


def random_augment(x: Tensor, generator: torch.Generator, *, scale: tuple[float, float] = (0.8, 1.0),
                   brightness: float = 0.2, contrast: float = 0.2, flip: float = 0.5, degrees: float = 5.0) -> Tensor:
    """PLG-MI's augmentation, differentiable in ``x``: one random resized crop (square, area fraction in
    ``scale``, resized back), horizontal flip, rotation by up to ``degrees`` (one affine resampling,
    bilinear, border padding), then brightness (``x * b``) and contrast (``(x - mean) * c + mean``, the mean
    of the image's grey level) factors in ``[1 - 0.2, 1 + 0.2]``, clamped to [0, 1]; parameters per image."""
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> Tensor:
        return (lo + (hi - lo) * torch.rand(n, generator=generator)).to(x.device, x.dtype)

    side = uniform(*scale).sqrt()  # crop side as a fraction of the image side (aspect ratio 1)
    tx = (1 - side) * uniform(-1.0, 1.0)
    ty = (1 - side) * uniform(-1.0, 1.0)
    sign = torch.where(torch.rand(n, generator=generator) < flip, -1.0, 1.0).to(x.device, x.dtype)
    angle = uniform(-degrees, degrees) * math.pi / 180
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([side * cos * sign, -side * sin, tx], 1),
                         torch.stack([side * sin * sign, side * cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out * uniform(1 - brightness, 1 + brightness).view(-1, 1, 1, 1)
    grey = out.mean(1, keepdim=True).mean((2, 3), keepdim=True)
    out = (out - grey) * uniform(1 - contrast, 1 + contrast).view(-1, 1, 1, 1) + grey
    return out.clamp(0.0, 1.0)


class PLGMI(Attack):
    name = "plg-mi"
    paper = "https://arxiv.org/abs/2302.09814"
    summary = "Pseudo-label guided MI: latent search in a conditional GAN, max-margin loss on augmented views, Adam."
    requires = frozenset({C.GRAD, C.LOGITS})
    #: the prior must be conditional (``prior.conditional``); ``run`` raises UsageError otherwise, before any query
    needs_conditional_prior = True

    class Config(AttackConfig):
        iterations: int = Field(600, ge=1, description="Adam steps per latent (PLG-MI: 600)")
        lr: float = Field(0.1, gt=0, description="Adam learning rate (PLG-MI: 0.1)")
        views: int = Field(2, ge=1, le=32, description="augmented views of each image per step (PLG-MI: 2)")
        loss: Literal["margin", "ce", "poincare"] = Field("margin", description="identity loss (PLG-MI: margin)")
        augment: bool = Field(True, description="apply the random augmentations (PLG-MI: yes)")
        batch_size: int | None = Field(None, ge=1, description="latents optimised together (None: all at once)")

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        if not getattr(prior, "conditional", False):
            raise UsageError(f"attack '{self.name}' needs a conditional prior (e.g. 'plg-cgan'); "
                             f"prior '{prior.name}' is unconditional")
        cfg = self.config
        loss_fn = LOSSES[cfg.loss]
        z0 = prior.sample_latent(len(labels), generator)
        y = labels.to(prior.device)
        aug_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))

        def objective(z: Tensor, idx: Tensor) -> Tensor:
            x = prior.decode(z, y[idx])
            total = torch.zeros(len(idx), device=x.device, dtype=x.dtype)
            for _ in range(cfg.views):
                v = random_augment(x, aug_gen) if cfg.augment else x
                logits = target.logits(v)
                total = total + loss_fn(logits, y[idx].to(logits.device)).to(total.device)
            return total

        zs, scores = [], []
        for sl in batched(len(labels), cfg.batch_size):
            out = optimise(z0[sl], iterations=cfg.iterations, lr=cfg.lr, optimizer="adam",
                           objective=lambda z, idx, o=sl.start: objective(z, idx + o))
            zs.append(out.params)
            scores.append(-out.loss)
        z = torch.cat(zs)
        with torch.no_grad():
            images = prior.decode(z, y)
        return AttackResult(self.name, images, labels, torch.cat(scores).cpu(), 0, 0.0, seed, {}, latents=z)


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(PLGMI)
