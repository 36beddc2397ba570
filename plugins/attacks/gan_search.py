"""The GAN-search attack family: GMI and KEDMI, each with the identity terms CE, LOM, MA and LOMMA.

Two searches in a GAN prior's latent space, both on the shared loop :func:`invertkit.core.optim.optimise`:

* **GMI's point search** (Zhang et al., "The Secret Revealer: Generative Model-Inversion Attacks Against
  Deep Neural Networks", CVPR 2020, https://arxiv.org/abs/1911.07135): for each row of ``labels`` (identity
  ``y``, random start ``z ~ N(0, I)``) minimise ``L(z) = -D(G(z)) + lambda * L_id(G(z), y)`` (``lambda = 100``)
  with momentum SGD (Nesterov form, lr 0.02, momentum 0.9), clipping ``z`` to [-1, 1] after every step. GMI
  averages the loss over a batch of 60 identities, so each latent moves by lr/60 times its own gradient:
  ``loss_batch`` keeps that scaling whatever number of latents invertkit runs together (all identities x
  restarts in one batch; the paper runs 5 random restarts per identity).
* **KEDMI's distributional search** (Chen et al., "Knowledge-Enriched Distributional Model Inversion
  Attacks", ICCV 2021, https://arxiv.org/abs/2010.04092): instead of one latent per restart, learn per
  identity ``y`` a Gaussian ``N(mu_y, diag exp(log_var_y))`` over the latent space (``mu = 0``,
  ``log_var = 1`` at the start) and minimise, over reparameterised samples ``z = mu + exp(log_var / 2) * eps``
  (clamped to [-1, 1], LOMMA's KEDMI ``clipz``), ``-log D(G(z)) + lambda * L_id`` (``lambda = 100``) with Adam
  (lr 0.02), one sample per identity per step, the loss averaged over a batch of 60 identities. The
  reconstructions are samples of the learned distributions (one per row of ``labels``). Made for the
  inversion-specific ``kedmi-gan`` prior; with a prior without a discriminator (an autoencoder) only the
  identity term is left (likewise for GMI).

Iterations. The official recovery scripts run GMI and KEDMI for 2,400 iterations (``recovery.py`` of the
KEDMI repository, ``iter_times=2400``; the LOMMA configs ``config/celeba/attacking/*.json`` likewise for every
variant), so 2,400 is the default of both searches (the GMI paper says 1,500).

The identity term ``L_id`` (:mod:`invertkit.plugins.attacks.identity_terms`) is CE (GMI, KEDMI), or one of
Nguyen et al.'s ("Re-thinking Model Inversion Attacks Against Deep Neural Networks", CVPR 2023,
https://arxiv.org/abs/2304.01669): LOM (logit loss + feature regulariser), MA (CE averaged over the target and
augmented models distilled from it on public data) or LOMMA (both). The family is the table
:data:`FAMILY`, (search, identity term) -> attack; each variant is a class of its own below, with its name,
paper, summary and ``Config`` (the search's defaults plus the term's options), and ``requires`` = ``grad``
plus what its identity term needs. LOM, MA and LOMMA need the attacker's public images
(``self.context.public_images``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.optim import batched, optimise
from invertkit.plugins.attacks.identity_terms import CE, LOM, LOMMA, MA, IdentityFn, IdentityTerm, LOMOptions, MAOptions


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


# ------------------------------------------------------------------------------------------ the searches
def optimise_rows(start: Tensor, objective: Callable[[Tensor, Tensor], Tensor], *, batch_size: int | None,
                  **options: Any) -> tuple[Tensor, Tensor]:
    """:func:`~invertkit.core.optim.optimise` over the rows of ``start`` in slices of ``batch_size`` (``None``:
    all at once); ``objective(params, idx)`` sees the rows' global indices. Returns the optimised rows and each
    row's last loss."""
    params, last = [], []
    for sl in batched(len(start), batch_size):
        out = optimise(start[sl], objective=lambda p, idx, o=sl.start: objective(p, idx + o), **options)
        params.append(out.params)
        last.append(out.loss)
    return torch.cat(params), torch.cat(last)


def search_latents(prior: Any, z0: Tensor, labels: Tensor, objective: Callable[[Tensor, Tensor], Tensor], *,
                   batch_size: int | None, **options: Any) -> tuple[Tensor, Tensor, Tensor]:
    """A point search in ``prior``'s latent space (GMI's, PLG-MI's): optimise the latents ``z0`` (one per row of
    ``labels``) with :func:`optimise_rows`, then decode them. Returns ``(z, images, scores)``, the score of a
    row minus its last loss (on the CPU)."""
    z, last = optimise_rows(z0, objective, batch_size=batch_size, **options)
    with torch.no_grad():
        images = prior.decode(z, labels)
    return z, images, -last.cpu()


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
    z, images, scores = search_latents(prior, z0, y, objective, batch_size=cfg.batch_size, iterations=cfg.iterations,
                                       lr=cfg.lr, momentum=cfg.momentum, optimizer="nesterov",
                                       loss_scale=1.0 / cfg.loss_batch, project=project)
    return AttackResult(name, images, labels, scores, 0, 0.0, seed, {}, latents=z, extras=dict(extras or {}))


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

    dist, last = optimise_rows(init, objective, batch_size=cfg.batch_size, iterations=cfg.iterations, lr=cfg.lr,
                               optimizer="adam", loss_scale=1.0 / cfg.loss_batch)
    eps = torch.randn((len(labels), *latent), generator=noise).to(prior.device)
    z = draw(dist[inverse.to(prior.device)], eps)
    with torch.no_grad():
        images = prior.decode(z, labels.to(prior.device))
    scores = -last.cpu()[inverse]
    info = {"identities": u, "mean_sigma": float(torch.exp(0.5 * dist[:, 1]).mean()), **(extras or {})}
    return AttackResult(name, images, labels, scores, 0, 0.0, seed, {}, latents=z, extras=info)


SEARCHES: dict[str, Callable[..., AttackResult]] = {"gmi": gmi_search, "kedmi": kedmi_search}
_SEARCH_CONFIG: dict[str, type[AttackConfig]] = {"gmi": GMISearch, "kedmi": KEDMISearch}


# ------------------------------------------------------------------------------------------ the family
class GANSearchAttack(Attack):
    """A member of the family: ``search`` ("gmi" or "kedmi") with identity term ``term``. A subclass states its
    name, paper, summary and ``Config`` (which must extend the search's config block and the term's options);
    ``requires`` is derived: ``grad`` plus what the identity term needs of the target."""

    search: ClassVar[str]
    term: ClassVar[IdentityTerm]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "term" not in cls.__dict__:
            return
        needed = (_SEARCH_CONFIG[cls.search], *cls.term.options)
        if not all(issubclass(cls.Config, block) for block in needed):
            raise TypeError(f"{cls.__name__}.Config must extend {', '.join(b.__name__ for b in needed)}")
        cls.requires = frozenset({C.GRAD}) | cls.term.requires

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        identity, extras = self.term.build(self, target, generator)
        return SEARCHES[self.search](self.name, self.config, labels, prior, generator, seed, identity, extras or None)


LOMMA_PAPER = "https://arxiv.org/abs/2304.01669"


class GMI(GANSearchAttack):
    """GMI (Zhang et al., CVPR 2020): ``-D(G(z)) + 100 * CE(T(G(z)), y)``, GMI's point search.

    Follows the official GMI/KEDMI recovery scripts (2,400 iterations; the paper says 1,500)."""

    name = "gmi"
    paper = "https://arxiv.org/abs/1911.07135"
    summary = "Generative model inversion: GAN-prior latent search, -D(G(z)) + lambda*CE, momentum SGD."
    search = "gmi"
    term = CE

    class Config(GMISearch):
        """GMI's published defaults (see :class:`GMISearch`)."""


class KEDMI(GANSearchAttack):
    """KEDMI (Chen et al., ICCV 2021): ``-log D(G(z)) + 100 * CE``, KEDMI's distributional search.

    Follows the official ``recovery.py`` (Adam lr 0.02, ``iter_times=2400``); ideally with the ``kedmi-gan``
    prior."""

    name = "kedmi"
    paper = "https://arxiv.org/abs/2010.04092"
    summary = "Distributional inversion: a learned Gaussian per identity in the GAN latent space, -log D + 100*CE, Adam."
    search = "kedmi"
    term = CE

    class Config(KEDMISearch):
        """KEDMI's published defaults (see :class:`KEDMISearch`)."""


class GMILOM(GANSearchAttack):
    """GMI + LOM (Nguyen et al., CVPR 2023): GMI's point search with the identity loss
    ``-logit_y(T(x)) + lambda_reg * mean_d (phi(x) - p_reg)_d ** 2`` (``lambda_reg = 1``, LOMMA's config ``lam``;
    ``p_reg`` the mean target feature of ~5,000 public images, official ``get_act_reg``/``reg_loss``)."""

    name = "gmi-lom"
    paper = LOMMA_PAPER
    summary = "GMI's latent search with LOM's identity loss: -logit_y + feature regulariser around public features."
    search = "gmi"
    term = LOM

    class Config(GMISearch, LOMOptions):
        """GMI's search defaults with LOM's options (LOMMA's configs)."""


class KEDMILOM(GANSearchAttack):
    """KEDMI + LOM (Nguyen et al., CVPR 2023): KEDMI's distributional search (Adam lr 0.02, 2,400 iterations
    as LOMMA's KEDMI config) with LOM's identity loss (``-logit_y`` + ``lambda_reg = 1`` times the feature
    regulariser around the mean public feature)."""

    name = "kedmi-lom"
    paper = LOMMA_PAPER
    summary = "KEDMI's distributional search with LOM's identity loss (-logit_y + feature regulariser)."
    search = "kedmi"
    term = LOM

    class Config(KEDMISearch, LOMOptions):
        """KEDMI's search defaults with LOM's options (LOMMA's KEDMI config)."""

        iterations: int = Field(2400, ge=1, description="Adam steps (LOMMA's KEDMI config: 2400)")


class GMIMA(GANSearchAttack):
    """GMI + MA (Nguyen et al., CVPR 2023, their variant ``L_aug``): GMI's point search with the cross-entropy
    identity loss averaged over the target and K students distilled from it on public data:
    ``-D(G(z)) + 100 * 1/(K+1) * sum_{M in {T, S_1..S_K}} CE(M(G(z)), y)``."""

    name = "gmi-ma"
    paper = LOMMA_PAPER
    summary = "GMI with model augmentation: CE averaged over the target and students distilled from it on public data."
    search = "gmi"
    term = MA

    class Config(GMISearch, MAOptions):
        """GMI's search defaults with MA's options (the official distillation recipe)."""


class GMILOMMA(GANSearchAttack):
    """GMI + LOMMA (Nguyen et al., CVPR 2023, their variant ``ours``): GMI's point search with LOM's logit loss
    averaged over the target and K distilled students plus the feature regulariser on the *target's* features
    only (official ``iden_loss``): ``1/(K+1) * sum_M -logit_y(M(x)) + lambda_reg * mean_d (phi_T(x) - p_reg)_d ** 2``."""

    name = "gmi-lomma"
    paper = LOMMA_PAPER
    summary = "GMI with LOMMA: logit loss averaged over the target and distilled students, plus LOM's regulariser."
    search = "gmi"
    term = LOMMA

    class Config(GMISearch, LOMOptions, MAOptions):
        """GMI's search defaults with LOM's and MA's options (LOMMA's configs)."""


class KEDMILOMMA(GANSearchAttack):
    """KEDMI + LOMMA (Nguyen et al., CVPR 2023, their best attack): KEDMI's distributional search (Adam lr 0.02,
    2,400 iterations in LOMMA's config, ``-log D(G(z)) + 100 * L_id``) with LOMMA's identity loss."""

    name = "kedmi-lomma"
    paper = LOMMA_PAPER
    summary = "KEDMI with LOMMA: distributional search, logit loss over target + distilled students, LOM regulariser."
    search = "kedmi"
    term = LOMMA

    class Config(KEDMISearch, LOMOptions, MAOptions):
        """KEDMI's search defaults with LOM's and MA's options (LOMMA's KEDMI config)."""

        iterations: int = Field(2400, ge=1, description="Adam steps (LOMMA's KEDMI config: 2400)")


#: the family: (search, identity term) -> attack, one row per registered variant (MA and LOMMA need not pair
#: with every search: KEDMI + MA is not one of the paper's variants)
FAMILY: dict[tuple[str, str], type[GANSearchAttack]] = {
    (cls.search, cls.term.name): cls for cls in (GMI, KEDMI, GMILOM, KEDMILOM, GMIMA, GMILOMMA, KEDMILOMMA)
}


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(GMI)
    register(KEDMI)
    register(GMILOM)
    register(KEDMILOM)
    register(GMIMA)
    register(GMILOMMA)
    register(KEDMILOMMA)
