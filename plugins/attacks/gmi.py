"""GMI: The Secret Revealer (Zhang et al., CVPR 2020), https://arxiv.org/abs/1911.07135.

White-box, GAN prior. For each identity y and random start z ~ N(0, I), minimise

    L(z) = -D(G(z)) + lambda * CE(T(G(z)), y)            (lambda = 100)

with momentum SGD (Nesterov form, lr 0.02, momentum 0.9) for 2,400 iterations (the official recovery scripts; the GMI paper says 1,500), clipping z to
[-1, 1] after every step; 5 random restarts per identity. GMI averages the loss over a batch of 60
identities, so each latent moves by lr/60 times its own gradient: ``loss_batch`` keeps that scaling
whatever number of latents invertkit runs together (all identities x restarts in one batch).
"""

from __future__ import annotations

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.plugins.attacks._identity import GMISearch, gmi_search, identity_term


class GMI(Attack):
    name = "gmi"
    paper = "https://arxiv.org/abs/1911.07135"
    summary = "Generative model inversion: GAN-prior latent search, -D(G(z)) + lambda*CE, momentum SGD."
    requires = frozenset({C.GRAD, C.PROBS})

    class Config(GMISearch):
        """GMI's published defaults (see :class:`~invertkit.plugins.attacks._identity.GMISearch`)."""

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        return gmi_search(self.name, self.config, labels, prior, generator, seed, identity_term(target, kind="ce"))


@hookimpl
def invertkit_register_attacks(register) -> None:
    register(GMI)
