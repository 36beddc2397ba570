"""KEDMI: Knowledge-Enriched Distributional Model Inversion (Chen et al., ICCV 2021),
https://arxiv.org/abs/2010.04092.

White-box, with (ideally) the inversion-specific ``kedmi-gan`` prior. Instead of one latent per restart, KEDMI
learns per identity ``y`` a Gaussian ``N(mu_y, diag exp(log_var_y))`` over the prior's latent space
(``mu = 0``, ``log_var = 1`` at the start) and minimises, over reparameterised samples
``z = mu + exp(log_var / 2) * eps`` (clamped to [-1, 1]),

    L(mu, log_var) = -log D(G(z)) + lambda * CE(T(G(z)), y)          (lambda = 100)

with Adam (lr 0.02) for 2,400 iterations (the official ``recovery.py``, ``iter_times=2400``, and LOMMA's configs), one sample
per identity per step, the loss averaged over a batch of 60 identities. The reconstructions are samples of
the learned distributions (one per row of ``labels``). With a prior without a discriminator (an
autoencoder) only the identity term is left.
"""

from __future__ import annotations

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.plugins.attacks._identity import KEDMISearch, identity_term, kedmi_search


class KEDMI(Attack):
    name = "kedmi"
    paper = "https://arxiv.org/abs/2010.04092"
    summary = "Distributional inversion: a learned Gaussian per identity in the GAN latent space, -log D + 100*CE, Adam."
    requires = frozenset({C.GRAD, C.PROBS})

    class Config(KEDMISearch):
        pass

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        return kedmi_search(self.name, self.config, labels, prior, generator, seed, identity_term(target, kind="ce"))


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(KEDMI)
