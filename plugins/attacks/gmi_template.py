"""``gmi-template``: the GMI-style baseline of template inversion — GMI's latent search in a GAN prior (Zhang et
al., "The Secret Revealer: Generative Model-Inversion Attacks Against Deep Neural Networks", CVPR 2020,
https://arxiv.org/abs/1911.07135; the official recovery scripts of https://github.com/AI-secure/GMI-Attack and
KEDMI's ``recovery.py``) with its identity term replaced by the leaked template's: for each leaked template ``t``
(``context.extras["templates"]``, one per row of ``labels``) minimise

    ``prior_weight * -D(G(z)) + lam * (1 - cos(F(G(z)), t))``

over ``z`` with GMI's optimiser (Nesterov SGD, lr 0.02, momentum 0.9, loss averaged over a batch of 60, ``z``
clipped to [-1, 1]; 2,400 iterations as the official scripts). Matching a generator's output to a target
template through the recogniser's gradient is the latent-optimisation family of template inversion (e.g.
Vendrow and Vendrow, "Realistic Face Reconstruction from Deep Embeddings", NeurIPS-W 2021, which searches a
StyleGAN latent against a template). White-box: it needs ``grad`` (and ``features``).

Deliberate difference from GMI: the identity term (GMI's is the cross-entropy of a class label; a template
attack has no class to aim at, only the template), so ``lam`` weighs a cosine gap in [0, 2] instead of a
cross-entropy; GMI's default ``lam = 100`` is kept.
"""

from __future__ import annotations

from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.plugins.attacks.gan_search import GMISearch, search_latents
from invertkit.plugins.attacks.tia_diffusion import cosine_gap, leaked_templates


class GMITemplate(Attack):
    name = "gmi-template"
    paper = "https://arxiv.org/abs/1911.07135"
    summary = ("GMI-style template-inversion baseline: GAN-prior latent search minimising -D(G(z)) + "
               "lambda*(1 - cos(F(G(z)), t)) for each leaked template t, Nesterov SGD, clipped z.")
    requires = frozenset({C.FEATURES, C.GRAD})
    needs_templates = True

    class Config(GMISearch):
        """GMI's search (the official scripts' defaults) with the template's identity term."""

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        leaked = leaked_templates(self, labels)
        cfg = self.config
        z0 = prior.sample_latent(len(labels), generator)
        if cfg.clip is not None:
            z0 = z0.clamp(-cfg.clip, cfg.clip)
        y = labels.to(prior.device)
        t = leaked.to(target.device)

        def objective(z: Tensor, idx: Tensor) -> Tensor:
            x = prior.decode(z, y[idx])
            loss = cfg.lam * cosine_gap(target.features(x), t[idx.to(t.device)]).to(x.dtype)
            if cfg.prior_weight > 0 and prior.has_discriminator:
                loss = loss - cfg.prior_weight * prior.realism(x)
            return loss

        project = (lambda z: z.clamp(-cfg.clip, cfg.clip)) if cfg.clip is not None else None
        z, images, scores = search_latents(prior, z0, y, objective, batch_size=cfg.batch_size,
                                           iterations=cfg.iterations, lr=cfg.lr, momentum=cfg.momentum,
                                           optimizer="nesterov", loss_scale=1.0 / cfg.loss_batch, project=project)
        return AttackResult(self.name, images, labels, scores, 0, 0.0, seed, {}, latents=z)


@hookimpl
def invertkit_register_attacks(register) -> None:
    register(GMITemplate)
