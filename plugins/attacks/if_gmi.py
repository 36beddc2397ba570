"""IF-GMI: Intermediate Features enhanced Generative Model Inversion (Qiu et al., ECCV 2024),
https://arxiv.org/abs/2407.13863 (official code: https://github.com/final-solution/IF-GMI).

White-box, with a *layered* GAN prior (``Prior.num_blocks > 0``: ``wgan-gp``, ``kedmi-gan``, ``plg-cgan``).
Instead of searching only the latent space, IF-GMI takes the generator apart and optimises, one after the
other, the latent and then the feature maps between the generator's blocks, each within an L1 ball around
where that stage started, so that the image can leave the prior's latent manifold a little, block by block:

1. **Initial selection** (PPA's, as IF-GMI's ``find_initial_w``): draw ``search_space`` latents from the
   prior (2,000 in the paper's main configs, 5,000 in its example), score each by the target's softmax
   confidence averaged over the image and its horizontal flip, and give every row of ``labels`` the best
   not-yet-taken latent of its identity (``k`` rows of one identity get its ``k`` most confident latents:
   the paper's 50 candidates per identity are 50 rows per identity here). With a conditional prior each
   identity's latents are decoded, and scored, with its own label.
2. **Stage 0**: Adam on the latent ``z``, projected after every step onto the L1 ball of radius ``r_0``
   around the selected ``z``.
3. **Stage i >= 1**: the features ``h = decode_to(z, 0)`` (stage 1), or the features one block further on
   from the previous stage's optimised features (stage i > 1), are the new parameters: Adam on ``h``,
   projected after every step onto the L1 ball of radius ``r_i`` around that starting ``h``; the image is
   ``decode_from(h, i - 1)``. As many stages run as the prior has blocks plus one, at most ``len(steps)``.

Every step minimises the Poincare loss (PPA's, ``xi = 1e-4``; official ``losses/poincare.py``) of the target's
logits on one randomly transformed view of the image: the official ``RandomResizedCrop`` (scale 0.9-1,
aspect ratio 1, back to the image size; its ``CenterCrop``/``Resize`` only fit StyleGAN's 1024 px output to
the target's 224 px input, which invertkit's priors already match). Optimiser: Adam, lr 0.005, betas
(0.1, 0.1); steps per stage 50 for the latent, then 10 per block (main configs: 8 stages). The reconstruction
is the last stage's image. The official code has no final selection (its older configs had PPA's; the
released ones report every stage's images, ranked afterwards by the *evaluation* model, which an attacker
does not have). The result's ``extras["adam_betas"]`` records the betas that ran.

Adapting the paper's StyleGAN2 defaults to invertkit's DCGAN-style priors:

* StyleGAN2's ``w`` modulates every block, so the official code keeps optimising ``w`` (within its own ball)
  in the later stages; a DCGAN latent feeds only the stem, so after stage 0 only the features move.
* The paper's radii are absolute L1 norms for StyleGAN2-1024 tensors: ``w`` (512 values) 1,000, then the
  features after block ``i - 1`` (512x4x4, 512x8x8, 512x16x16, 512x32x32, 512x64x64, 256x128x128,
  128x256x256 values) 2,000, 3,000, 4,000, 5,000, 6,000, 8,000, 8,000. invertkit states them *per element*
  (each radius divided by that tensor's size: 1.953125 for the latent, then 0.244140625, 0.091552734375,
  ...) and multiplies by the size of its own tensor, so a feature map of any shape gets the same mean
  absolute deviation per value as the paper's. A radius of 0 leaves that stage unconstrained (the official
  code projects only for a radius > 0).
* StyleGAN's truncation (psi 0.5) in the candidate search has no counterpart in a DCGAN latent and is left out.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor

from invertkit.core import losses
from invertkit.core.augment import random_resized_crop
from invertkit.core.errors import ConfigError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability as C, PriorFeature
from invertkit.core.interfaces.results import AttackResult, empty_result
from invertkit.core.optim import batched, optimise, selection_confidences

#: the paper's L1 radii (main configs ``max_radius_w[0]`` and ``max_radius_mid_vecor[1:]``) divided by the sizes
#: of the StyleGAN2-1024 tensors they bound: w (512), then the outputs of blocks b4 ... b256
_STYLEGAN_SIZES = (512 * 4 * 4, 512 * 8 * 8, 512 * 16 * 16, 512 * 32 * 32, 512 * 64 * 64, 256 * 128 * 128,
                   128 * 256 * 256)
PAPER_LATENT_RADIUS = 1000 / 512
PAPER_FEATURE_RADII = [r / n for r, n in zip((2000, 3000, 4000, 5000, 6000, 8000, 8000), _STYLEGAN_SIZES)]




def project_l1_ball(v: Tensor, radius: float | Tensor) -> Tensor:
    """The Euclidean projection of every row of ``v`` (all dimensions after the first) onto the L1 ball
    ``{x : ||x||_1 <= radius}`` (Duchi et al., ICML 2008, https://doi.org/10.1145/1390156.1390191, the
    sort-based algorithm): rows inside stay; the others become ``sign(v) * max(|v| - theta, 0)`` with the
    ``theta >= 0`` that puts them on the sphere. ``radius`` is a number or one per row (``>= 0``)."""
    flat = v.reshape(v.shape[0], -1)
    n, d = flat.shape
    r = torch.as_tensor(radius, dtype=flat.dtype, device=flat.device).reshape(-1).expand(n)
    a = flat.abs()
    inside = a.sum(1) <= r
    mu = a.sort(1, descending=True).values
    cum = mu.cumsum(1)
    j = torch.arange(1, d + 1, device=flat.device, dtype=flat.dtype)
    # rho = the largest j with mu_j > (sum_{i <= j} mu_i - r) / j (the condition holds for a prefix of j)
    rho = ((mu * j > cum - r.unsqueeze(1)) * j).amax(1).long().clamp_min(1)
    theta = ((cum.gather(1, (rho - 1).unsqueeze(1)).squeeze(1) - r) / rho.to(flat.dtype)).clamp_min(0)
    out = torch.sign(flat) * (a - theta.unsqueeze(1)).clamp_min(0)
    return torch.where(inside.unsqueeze(1), flat, out).reshape(v.shape)


def _ball(start: Tensor, radius: float | None):  # noqa: ANN202 - a projection for optimise(project=)
    if radius is None or radius <= 0:
        return None
    return lambda p: start + project_l1_ball(p - start, radius)


LOSSES = {"poincare": lambda logits, y: losses.poincare(logits, y, eps=1e-4),
          "ce": losses.cross_entropy, "margin": losses.max_margin}


class IFGMI(Attack):
    name = "if-gmi"
    paper = "https://arxiv.org/abs/2407.13863"
    summary = ("Intermediate-feature GMI: latent, then each generator block's features in an L1 ball, "
               "Poincare loss on random crops, Adam; PPA's initial selection.")
    requires = frozenset({C.GRAD, C.LOGITS})
    #: the prior must be layered (``prior.num_blocks > 0``); ``check`` raises CapabilityError otherwise, before
    #: any query, and the bench skips the cell with the reason
    prior_requires = frozenset({PriorFeature.LAYERED})

    class Config(AttackConfig):
        steps: list[int] = Field(
            [50, 10, 10, 10, 10, 10, 10, 10],
            description="Adam steps per stage: stage 0 the latent, stage i the features after block i-1; as many "
                        "stages run as the prior has blocks + 1 (IF-GMI main configs: 50, then 10 for 7 blocks)")
        lr: float = Field(0.005, gt=0, description="Adam learning rate (IF-GMI: 0.005)")
        beta1: float = Field(0.1, ge=0, lt=1, description="Adam beta1 (IF-GMI: 0.1)")
        beta2: float = Field(0.1, ge=0, lt=1, description="Adam beta2 (IF-GMI: 0.1)")
        latent_radius: float = Field(
            PAPER_LATENT_RADIUS, ge=0,
            description="L1 radius around the selected latent, per latent value (IF-GMI: 1000 for 512-d w, "
                        "i.e. 1.953125); 0: unconstrained")
        feature_radius: list[float] = Field(
            PAPER_FEATURE_RADII,
            description="L1 radius of stage i >= 1 around its starting features, per feature value (IF-GMI: "
                        "2000, 3000, ..., 8000 over StyleGAN2's 512x4x4 ... 128x256x256 block outputs); the "
                        "last entry serves deeper stages; 0: unconstrained")
        loss: Literal["poincare", "ce", "margin"] = Field(
            "poincare", description="identity loss (IF-GMI: poincare, xi 1e-4)")
        augment: bool = Field(True, description="score one random resized crop per step (IF-GMI: yes)")
        crop_scale: tuple[float, float] = Field(
            (0.9, 1.0), description="area fraction of the random crop (IF-GMI: 0.9-1)")
        search_space: int = Field(2000, ge=1, description="latents drawn for the initial selection (IF-GMI main "
                                                          "configs: 2000; example: 5000)")
        selection_flip: bool = Field(True, description="average the selection confidence over the horizontal "
                                                       "flip too (IF-GMI: yes)")
        selection_batch: int = Field(500, ge=1, description="latents decoded and scored at once in the selection")
        batch_size: int | None = Field(None, ge=1, description="latents optimised together (None: all at once)")

        @field_validator("steps")
        @classmethod
        def _steps(cls, v: list[int]) -> list[int]:
            if not v or any(s < 1 for s in v):
                raise ValueError("steps must be a non-empty list of positive step counts")
            return v

        @field_validator("feature_radius")
        @classmethod
        def _radii(cls, v: list[float]) -> list[float]:
            if not v or any(r < 0 for r in v):
                raise ValueError("feature_radius must be a non-empty list of radii >= 0")
            return v

        @field_validator("crop_scale")
        @classmethod
        def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
            if not 0 < v[0] <= v[1] <= 1:
                raise ValueError("crop_scale must satisfy 0 < low <= high <= 1")
            return v


    # ------------------------------------------------------------------------------------ pieces
    @torch.no_grad()
    def select_initial(self, target, prior, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        """IF-GMI's (PPA's) initial selection: the latents and their selection confidences, one per row of
        ``labels``; costs ``search_space`` (x2 with the flip) queries, per identity with a conditional prior."""
        cfg = self.config
        ids, counts = torch.unique(labels, return_counts=True)
        if int(counts.max()) > cfg.search_space:
            raise ConfigError(f"attack '{self.name}': {int(counts.max())} rows of one identity but search_space is "
                              f"{cfg.search_space}; raise search_space to at least the rows per identity")
        pool = prior.sample_latent(cfg.search_space, generator)
        conditional = bool(getattr(prior, "conditional", False))
        table = selection_confidences(target, prior.decode, pool, [int(c) for c in ids] if conditional else None,
                                      flip=cfg.selection_flip, batch_size=cfg.selection_batch)
        z0 = torch.empty((len(labels), *pool.shape[1:]), dtype=pool.dtype, device=pool.device)
        conf0 = torch.empty(len(labels))
        for c, m in zip(ids.tolist(), counts.tolist()):
            best = torch.topk(table[:, c], m)
            rows = (labels == c).nonzero().squeeze(1)
            z0[rows.to(pool.device)] = pool[best.indices.to(pool.device)]
            conf0[rows] = best.values
        return z0, conf0

    def _adam(self) -> dict:
        betas = (self.config.beta1, self.config.beta2)
        return {"betas": betas}

    # ------------------------------------------------------------------------------------ run
    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        cfg = self.config
        if len(labels) == 0:
            return empty_result(self.name, tuple(prior.image_shape), {}, seed)
        loss_fn = LOSSES[cfg.loss]
        stages = min(len(cfg.steps), 1 + int(prior.num_blocks))
        y = labels.to(prior.device)
        z0, conf0 = self.select_initial(target, prior, labels, generator)
        aug_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))

        def identity(x: Tensor, yy: Tensor) -> Tensor:
            v = random_resized_crop(x, aug_gen, cfg.crop_scale, (1.0, 1.0)) if cfg.augment else x
            logits = target.logits(v)
            return loss_fn(logits, yy.to(logits.device)).to(x.device)

        def feature_radius(stage: int) -> float:
            return cfg.feature_radius[min(stage - 1, len(cfg.feature_radius) - 1)]

        zs, hs, scores = [], [], []
        stage_loss = torch.zeros(stages)
        l1: list[float | None] = [None] * stages
        for sl in batched(len(labels), cfg.batch_size):
            ys = y[sl]
            start = z0[sl]
            r = cfg.latent_radius * start[0].numel()
            out = optimise(start, iterations=cfg.steps[0], lr=cfg.lr, optimizer="adam", project=_ball(start, r),
                           objective=lambda z, idx, ys=ys: identity(prior.decode(z, ys[idx]), ys[idx]), **self._adam())
            z, h, loss = out.params, None, out.loss
            stage_loss[0] += float(out.loss.sum())
            l1[0] = r if r > 0 else None
            for stage in range(1, stages):
                k = stage - 1
                with torch.no_grad():
                    start = prior.decode_to(z, 0, ys) if k == 0 else prior.decode_from(h, k - 1, ys, to=k)
                r = feature_radius(stage) * start[0].numel()
                out = optimise(start, iterations=cfg.steps[stage], lr=cfg.lr, optimizer="adam",
                               project=_ball(start, r), **self._adam(),
                               objective=lambda h, idx, ys=ys, k=k: identity(prior.decode_from(h, k, ys[idx]), ys[idx]))
                h, loss = out.params, out.loss
                stage_loss[stage] += float(out.loss.sum())
                l1[stage] = r if r > 0 else None
            zs.append(z)
            hs.append(h)
            scores.append(-loss)
        z = torch.cat(zs)
        with torch.no_grad():
            if stages == 1:
                images = prior.decode(z, y)
            else:
                images = prior.decode_from(torch.cat(hs), stages - 2, y)
        spaces = ["latent"] + [f"features after block {s - 1}" for s in range(1, stages)]
        info = {
            "stages": [{"space": spaces[s], "steps": cfg.steps[s], "l1_radius": l1[s],
                        "mean_loss": float(stage_loss[s]) / len(labels)} for s in range(stages)],
            "mean_selection_confidence": float(conf0.mean()),
            "adam_betas": [cfg.beta1, cfg.beta2],
        }
        return AttackResult(self.name, images, labels, torch.cat(scores).cpu(), 0, 0.0, seed, {}, latents=z,
                            extras=info)


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(IFGMI)
