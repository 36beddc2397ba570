"""Shared pieces of the white-box GAN-prior attacks (GMI/KEDMI with LOM and MA, PLG-MI): the identity term
over the target (and MA's augmented models), LOM's feature statistics of public images, the augmented models,
and the two search loops (GMI's point search, KEDMI's distributional search) on :func:`invertkit.core.optim.optimise`.

Not a plugin (no entry point): the attack modules ``gmi_lom``, ``kedmi``, ``kedmi_lom``, ``gmi_ma``,
``gmi_lomma``, ``kedmi_lomma`` state their objective and defaults and call into here.

Public data. LOM's ``p_reg`` and MA's augmented models need the attacker's *public* images; an attack takes
them from ``self.context`` (an :class:`~invertkit.core.interfaces.attack.AttackContext` the bench sets before
``run``): ``context.public_images`` (required). MA's students are distilled from the target *as the attacker
sees it* (its view, as defended), every public image it labels counted in the attack's queries; with
``context.cache`` (the bench's) they are trained once per (target, defense) and re-used, their queries charged
again. ``context.extras["augmented_models"]`` (a list of ``nn.Module``) overrides the distillation altogether.

Iterations. The official recovery scripts run GMI and KEDMI for 2,400 iterations (``recovery.py`` of the
KEDMI repository, ``iter_times=2400``; the LOMMA configs ``config/celeba/attacking/*.json`` likewise for every
variant), so 2,400 is the default of both searches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from invertkit.core import losses
from invertkit.core.errors import CapabilityError, UsageError
from invertkit.core.interfaces.attack import AttackConfig
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.optim import batched, optimise

IdentityFn = Callable[[Tensor, Tensor], Tensor]  # (images, labels) -> per-sample identity loss


# ------------------------------------------------------------------------------------------ config blocks
class GMISearch(AttackConfig):
    """GMI's latent search (Zhang et al. 2020): Nesterov SGD on z, clipped, loss averaged over 60."""

    iterations: int = Field(2400, ge=1, description="optimisation steps per latent (the official recovery "
                                                     "scripts and LOMMA's configs: 2400)")
    lr: float = Field(0.02, gt=0, description="step size (GMI: 0.02)")
    momentum: float = Field(0.9, ge=0, lt=1, description="Nesterov momentum (GMI: 0.9)")
    lam: float = Field(100.0, ge=0, description="weight of the identity loss (GMI/LOMMA: 100)")
    prior_weight: float = Field(1.0, ge=0, description="weight of the prior loss -D(G(z))")
    clip: float | None = Field(1.0, gt=0, description="z is clamped to [-clip, clip] after each step (GMI: 1)")
    loss_batch: int = Field(60, ge=1, description="GMI's loss-averaging batch; gradient scale is 1/loss_batch")
    batch_size: int | None = Field(None, ge=1, description="latents optimised together (None: all at once)")


class KEDMISearch(AttackConfig):
    """KEDMI's distributional search (Chen et al. 2021): Adam on a Gaussian (mu, log var) per identity."""

    iterations: int = Field(2400, ge=1, description="Adam steps (KEDMI's recovery.py and LOMMA's configs: 2400)")
    lr: float = Field(0.02, gt=0, description="Adam learning rate (KEDMI: 0.02)")
    lam: float = Field(100.0, ge=0, description="weight of the identity loss (KEDMI: 100)")
    prior_weight: float = Field(1.0, ge=0, description="weight of the prior loss -log D(G(z))")
    init_log_var: float = Field(1.0, description="initial log-variance of every latent dimension (KEDMI: 1, mu: 0)")
    clip: float | None = Field(1.0, gt=0, description="samples z are clamped to [-clip, clip] before decoding "
                                                    "(LOMMA's KEDMI: clipz, range 1)")
    samples_per_step: int = Field(1, ge=1, le=64, description="reparameterised samples per identity per step (KEDMI: 1)")
    loss_batch: int = Field(60, ge=1, description="KEDMI averages over 60 identities; gradient scale 1/loss_batch")
    batch_size: int | None = Field(None, ge=1, description="identities optimised together (None: all at once)")


class LOMOptions(AttackConfig):
    """LOM's identity loss (Nguyen et al. 2023): -logit_y + reg_weight * mean_d (phi(x) - p_reg)^2."""

    reg_weight: float = Field(1.0, ge=0, description="weight of the feature regulariser (LOMMA's config 'lam': 1.0)")
    p_reg: Literal["mean", "sampled"] = Field(
        "mean", description="'mean': p_reg is the mean public feature (the official code's effective choice); "
                            "'sampled': drawn per sample and step from N(mean, std^2) of the public features")
    reg_samples: int = Field(5000, ge=1, description="public images whose target features give p_reg (LOM: ~5000)")


class MAOptions(AttackConfig):
    """MA (Nguyen et al. 2023): the identity loss averaged over the target and augmented (distilled) models."""

    ma_archs: list[str] | None = Field(
        None, description="architectures of the augmented models (registry names or timm:<name>); None: "
                          "lomma-efficientnet-b0/b1/b2 (the paper's) for images of 64 px and more, else "
                          "small-cnn + small-mlp")
    distill_variant: Literal["kl", "kl_l2"] = Field(
        "kl", description="MA distillation loss: 'kl' (the paper's and the official code's); 'kl_l2' adds an L2 "
                          "term on the logits, from a third-party reproduction, not from the paper")
    distill_epochs: int = Field(20, ge=1, description="distillation epochs over the public images (MA: 20)")
    distill_augment: bool = Field(False, description="random 1-pixel shifts of the public images while distilling "
                                                     "(not in the official recipe, which has no augmentation)")
    distill_seed: int = Field(0, ge=0, description="seed of the first augmented model (model i gets seed + i)")


# ------------------------------------------------------------------------------------------ public data
def public_images(attack: Any) -> Tensor:
    ctx = getattr(attack, "context", None)
    images = getattr(ctx, "public_images", None)
    if images is None:
        raise UsageError(f"attack '{attack.name}' needs the attacker's public images: set attack.context = "
                         "AttackContext(public_images=...) (the bench does) before running it")
    return images


@torch.no_grad()
def feature_stats(target: Any, images: Tensor, n: int, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of the target's penultimate features over the first ``n`` public images
    (LOM's ``get_act_reg``; one ``features`` query per image)."""
    images = images[:n]
    feats = torch.cat([target.features(images[i : i + batch_size].to(target.device)).flatten(1).float()
                       for i in range(0, len(images), batch_size)])
    std = feats.std(0) if len(feats) > 1 else torch.zeros_like(feats[0])
    return feats.mean(0), std


def default_archs(image_shape: Sequence[int]) -> list[str]:
    if min(image_shape[-2:]) >= 64:
        return ["lomma-efficientnet-b0", "lomma-efficientnet-b1", "lomma-efficientnet-b2"]
    return ["small-cnn", "small-mlp"]


def augmented(attack: Any, target: Any) -> list[nn.Module]:
    """MA's augmented models for ``target`` (see the module docstring for where they come from)."""
    cfg = attack.config
    ctx = getattr(attack, "context", None)
    given = getattr(ctx, "extras", {}).get("augmented_models") if ctx is not None else None
    if given is not None:
        models = list(given)
    else:
        from invertkit.core.zoo.distill import augmented_models

        plugins = getattr(ctx, "plugins", None)
        if plugins is None:
            from invertkit.core.plugins import get_plugins

            plugins = get_plugins()
        archs = list(cfg.ma_archs) if cfg.ma_archs is not None else default_archs(target.input_shape)
        models = augmented_models(target, public_images(attack), plugins, archs, cfg.distill_variant,
                                  cache=getattr(ctx, "cache", None), seed=cfg.distill_seed, epochs=cfg.distill_epochs,
                                  augment=cfg.distill_augment)
    for m in models:
        m.eval().requires_grad_(False)
    return models


# ------------------------------------------------------------------------------------------ identity terms
def identity_term(
    target: Any,
    *,
    kind: Literal["ce", "logit"],
    models: Sequence[nn.Module] = (),
    p_mean: Tensor | None = None,
    p_std: Tensor | None = None,
    reg_weight: float = 0.0,
    noise: torch.Generator | None = None,
) -> IdentityFn:
    """The identity loss of LOMMA's ``iden_loss``: the per-model loss (``ce``: cross-entropy; ``logit``:
    LOM's -logit_y) averaged over the target and the augmented ``models``, plus (LOM) ``reg_weight`` times
    the feature regulariser of the *target's* features around ``p_reg`` (``p_mean``, or with ``p_std`` a
    point drawn from ``N(p_mean, p_std^2)`` per sample and call, from ``noise``)."""
    per_model = losses.cross_entropy if kind == "ce" else losses.logit_loss

    def fn(x: Tensor, y: Tensor) -> Tensor:
        out = target.log_probs(x) if kind == "ce" else target.logits(x)
        loss = per_model(out, y.to(out.device))
        for m in models:
            dev = next(m.parameters()).device
            loss = loss + per_model(m(x.to(dev)), y.to(dev)).to(loss.device)
        loss = loss / (1 + len(models))
        if reg_weight > 0 and p_mean is not None:
            feats = target.features(x)
            p = p_mean.to(feats.device)
            if p_std is not None:
                eps = torch.randn((len(x), p.numel()), generator=noise).to(feats.device)
                p = p.view(1, -1) + p_std.to(feats.device).view(1, -1) * eps
            loss = loss + reg_weight * losses.feature_regulariser(feats, p)
        return loss

    return fn


def lom_term(attack: Any, target: Any, models: Sequence[nn.Module], generator: torch.Generator) -> IdentityFn:
    """LOM's identity term for ``attack`` (config :class:`LOMOptions`), with ``p_reg`` from public features."""
    cfg = attack.config
    for cap in (C.LOGITS, C.FEATURES):
        if not target.has(cap):  # Attack.check refuses first; this guards direct calls
            raise CapabilityError(f"attack '{attack.name}' needs the target's {cap.value}")
    mean, std = feature_stats(target, public_images(attack), cfg.reg_samples)
    noise = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    return identity_term(target, kind="logit", models=models, p_mean=mean,
                         p_std=std if cfg.p_reg == "sampled" else None, reg_weight=cfg.reg_weight, noise=noise)


# ------------------------------------------------------------------------------------------ search loops
def gmi_search(name: str, cfg: GMISearch, labels: Tensor, prior: Any, generator: torch.Generator, seed: int,
               identity: IdentityFn, extras: dict[str, Any] | None = None) -> AttackResult:
    """GMI's loop with an arbitrary identity term: minimise ``prior_weight * -D(G(z)) + lam * identity``
    per latent (one latent per row of ``labels``), Nesterov SGD, clipped z."""
    z0 = prior.sample_latent(len(labels), generator)
    if cfg.clip is not None:
        z0 = z0.clamp(-cfg.clip, cfg.clip)
    y = labels.to(prior.device)

    def objective(z: Tensor, idx: Tensor) -> Tensor:
        x = prior.decode(z, y[idx])
        loss = cfg.lam * identity(x, y[idx])
        if cfg.prior_weight > 0 and prior.has_discriminator:
            loss = loss - cfg.prior_weight * prior.realism(x)
        return loss

    project = (lambda z: z.clamp(-cfg.clip, cfg.clip)) if cfg.clip is not None else None
    zs, scores = [], []
    for sl in batched(len(labels), cfg.batch_size):
        out = optimise(z0[sl], iterations=cfg.iterations, lr=cfg.lr, momentum=cfg.momentum, optimizer="nesterov",
                       loss_scale=1.0 / cfg.loss_batch, project=project,
                       objective=lambda z, idx, o=sl.start: objective(z, idx + o))
        zs.append(out.params)
        scores.append(-out.loss)
    z = torch.cat(zs)
    with torch.no_grad():
        images = prior.decode(z, y)
    return AttackResult(name, images, labels, torch.cat(scores).cpu(), 0, 0.0, seed, {}, latents=z,
                        extras=dict(extras or {}))


def kedmi_search(name: str, cfg: KEDMISearch, labels: Tensor, prior: Any, generator: torch.Generator, seed: int,
                 identity: IdentityFn, extras: dict[str, Any] | None = None) -> AttackResult:
    """KEDMI's distributional search: one Gaussian ``N(mu, exp(log_var))`` per distinct identity of
    ``labels`` (``mu = 0``, ``log_var = init_log_var``), the optimised parameter rows ``(U, 2, *latent)``;
    each step draws ``samples_per_step`` reparameterised latents per identity (from a generator seeded by the
    attack's), clamps them, decodes them and minimises the mean of ``prior_weight * -log D + lam * identity``.
    Every row of ``labels`` is then one sample from its identity's learned distribution."""
    latent = tuple(prior.latent_shape)
    ids, inverse = torch.unique(labels, return_inverse=True)
    u, s = len(ids), cfg.samples_per_step
    y_ids = ids.to(prior.device)
    init = torch.zeros((u, 2, *latent), device=prior.device)
    init[:, 1] = cfg.init_log_var
    noise = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))

    def draw(params: Tensor, eps: Tensor) -> Tensor:
        z = params[:, 0] + torch.exp(0.5 * params[:, 1]) * eps
        return z.clamp(-cfg.clip, cfg.clip) if cfg.clip is not None else z

    def objective(params: Tensor, idx: Tensor) -> Tensor:
        n = len(idx)
        eps = torch.randn((s, n, *latent), generator=noise).to(params.device)
        z = draw(params.unsqueeze(0).expand(s, *params.shape).reshape(s * n, *params.shape[1:]),
                 eps.reshape(s * n, *latent))
        yy = y_ids[idx].repeat(s)
        x = prior.decode(z, yy)
        loss = cfg.lam * identity(x, yy)
        if cfg.prior_weight > 0 and prior.has_discriminator:
            loss = loss - cfg.prior_weight * prior.realism(x)
        return loss.view(s, n).mean(0)

    params, losses_ = [], []
    for sl in batched(u, cfg.batch_size):
        out = optimise(init[sl], iterations=cfg.iterations, lr=cfg.lr, optimizer="adam",
                       loss_scale=1.0 / cfg.loss_batch, objective=lambda p, idx, o=sl.start: objective(p, idx + o))
        params.append(out.params)
        losses_.append(out.loss)
    dist = torch.cat(params)
    eps = torch.randn((len(labels), *latent), generator=noise).to(prior.device)
    z = draw(dist[inverse.to(prior.device)], eps)
    with torch.no_grad():
        images = prior.decode(z, labels.to(prior.device))
    scores = -torch.cat(losses_).cpu()[inverse]
    info = {"identities": u, "mean_sigma": float(torch.exp(0.5 * dist[:, 1]).mean()), **(extras or {})}
    return AttackResult(name, images, labels, scores, 0, 0.0, seed, {}, latents=z, extras=info)
