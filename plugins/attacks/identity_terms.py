"""The identity terms of the GAN-search attack family (:mod:`invertkit.plugins.attacks.gan_search`) and of VMI:
what "looks like identity ``y`` to the target" is measured by. Not a plugin (no entry point, no hook).

* **CE**: cross-entropy of the target's output (GMI, Zhang et al. CVPR 2020; KEDMI, Chen et al. ICCV 2021).
* **LOM**: logit maximisation, ``-logit_y``, plus ``reg_weight`` times the feature regulariser
  ``mean_d (phi(x) - p_reg)_d ** 2`` of the target's penultimate features around ``p_reg``, the mean target
  feature of ~5,000 public images (Nguyen et al., "Re-thinking Model Inversion Attacks Against Deep Neural
  Networks", CVPR 2023, https://arxiv.org/abs/2304.01669; official ``get_act_reg``/``reg_loss``: the code draws
  a point from ``N(mean, std^2)`` and then overwrites it with the mean, so ``p_reg = "mean"`` is the default and
  ``"sampled"`` the variant the paper describes).
* **MA**: model augmentation, the per-model loss averaged over the target and K augmented models distilled
  from it on public data (same paper, variant ``L_aug``; official ``iden_loss``: the regulariser, with LOM,
  on the *target's* features only).
* **LOMMA**: both (the paper's ``ours``).

:data:`TERMS` is the table the family is built from: one :class:`IdentityTerm` per row, with the capabilities
it needs of the target and the config options it adds.

Public data. LOM's ``p_reg`` and MA's augmented models need the attacker's *public* images; an attack takes
them from ``self.context`` (an :class:`~invertkit.core.interfaces.attack.AttackContext` the bench sets before
``run``): ``context.public_images`` (required). MA's students are distilled from the target *as the attacker
sees it* (its view, as defended; :mod:`invertkit.core.zoo.distill`: KL to the target's soft labels, 20 epochs,
SGD lr 0.01; the paper's students are EfficientNet-B0/B1/B2 at 64x64, here ``ma_archs``, by default fitted to
the image size), every public image it labels counted in the attack's queries; with ``context.cache`` (the
bench's) they are trained once per (target, defense) and re-used, their queries charged again.
``context.extras["augmented_models"]`` (a list of ``nn.Module``) overrides the distillation altogether.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from invertkit.core import losses
from invertkit.core.errors import CapabilityError, UsageError
from invertkit.core.interfaces.attack import AttackConfig
from invertkit.core.interfaces.capability import Capabilities, Capability as C

IdentityFn = Callable[[Tensor, Tensor], Tensor]  # (images, labels) -> per-sample identity loss


# ------------------------------------------------------------------------------------------ config blocks
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


# ------------------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class IdentityTerm:
    """One identity term of the family: ``lom`` (LOM's logit loss and feature regulariser, else CE) and ``ma``
    (averaged over augmented models, else the target alone); ``requires`` what it needs of the target besides
    ``grad``; ``options`` the config blocks it adds to an attack's ``Config``."""

    name: str
    lom: bool
    ma: bool
    requires: Capabilities
    options: tuple[type[AttackConfig], ...]

    def build(self, attack: Any, target: Any, generator: torch.Generator) -> tuple[IdentityFn, dict[str, Any]]:
        """The identity function for ``attack`` (its config holds :attr:`options`) on ``target``, and the facts
        to report in the result's extras (the number of augmented models). MA's models are made first, then
        LOM's ``p_reg`` (the official order; it fixes what is queried when)."""
        models = augmented(attack, target) if self.ma else []
        if self.lom:
            fn = lom_term(attack, target, models, generator)
        else:
            fn = identity_term(target, kind="ce", models=models)
        return fn, ({"augmented_models": len(models)} if self.ma else {})


CE = IdentityTerm("ce", lom=False, ma=False, requires=frozenset({C.PROBS}), options=())
LOM = IdentityTerm("lom", lom=True, ma=False, requires=frozenset({C.LOGITS, C.FEATURES}), options=(LOMOptions,))
MA = IdentityTerm("ma", lom=False, ma=True, requires=frozenset({C.PROBS}), options=(MAOptions,))
LOMMA = IdentityTerm("lomma", lom=True, ma=True, requires=frozenset({C.LOGITS, C.FEATURES}),
                     options=(LOMOptions, MAOptions))
#: the identity terms by name
TERMS: dict[str, IdentityTerm] = {t.name: t for t in (CE, LOM, MA, LOMMA)}
