"""GMI + MA: GMI's latent search with model augmentation (Nguyen et al., "Re-thinking Model Inversion Attacks
Against Deep Neural Networks", CVPR 2023, https://arxiv.org/abs/2304.01669; their variant ``L_aug``).

White-box. The attacker distils K augmented models from the target on its *public* images
(:mod:`invertkit.core.zoo.distill`: KL to the target's soft labels, 20 epochs, SGD lr 0.01; the paper's
students are EfficientNet-B0/B1/B2 at 64x64, here ``ma_archs``, by default fitted to the image size) and
averages GMI's cross-entropy identity loss over the target and the K students:

    L(z) = -D(G(z)) + lambda * 1/(K+1) * sum_{M in {T, S_1..S_K}} CE(M(G(z)), y)       (lambda = 100)

The rest is GMI (Nesterov SGD lr 0.02, momentum 0.9, 2,400 iterations as the official recovery scripts,
clipped z). Needs ``self.context.public_images``. The students are distilled from the target as the attacker
sees it (every public image they are shown is a query) and, through ``context.cache``, trained once per
(target, defense) and paid for again on re-use.
"""

from __future__ import annotations

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.plugins.attacks._identity import GMISearch, MAOptions, augmented, gmi_search, identity_term


class GMIMA(Attack):
    name = "gmi-ma"
    paper = "https://arxiv.org/abs/2304.01669"
    summary = "GMI with model augmentation: CE averaged over the target and students distilled from it on public data."
    requires = frozenset({C.GRAD, C.PROBS})

    class Config(GMISearch, MAOptions):
        pass

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        models = augmented(self, target)
        return gmi_search(self.name, self.config, labels, prior, generator, seed,
                          identity_term(target, kind="ce", models=models), {"augmented_models": len(models)})


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(GMIMA)
