"""GMI + LOMMA: GMI's latent search with logit maximisation *and* model augmentation (Nguyen et al.,
"Re-thinking Model Inversion Attacks Against Deep Neural Networks", CVPR 2023,
https://arxiv.org/abs/2304.01669; their variant ``ours``).

White-box. The identity loss is LOM's logit loss averaged over the target and K augmented models distilled
from it on public data, plus the feature regulariser on the *target's* features only (official ``iden_loss``):

    L_id(x) = 1/(K+1) * sum_M -logit_y(M(x)) + lambda_reg * mean_d (phi_T(x) - p_reg)_d ** 2     (lambda_reg = 1)

inside GMI's loop (``-D(G(z)) + 100 * L_id``, Nesterov SGD lr 0.02, 2,400 iterations as LOMMA's configs, clipped z). Needs
``self.context.public_images``.
"""

from __future__ import annotations

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.plugins.attacks._identity import GMISearch, LOMOptions, MAOptions, augmented, gmi_search, lom_term


class GMILOMMA(Attack):
    name = "gmi-lomma"
    paper = "https://arxiv.org/abs/2304.01669"
    summary = "GMI with LOMMA: logit loss averaged over the target and distilled students, plus LOM's regulariser."
    requires = frozenset({C.GRAD, C.LOGITS, C.FEATURES})

    class Config(GMISearch, LOMOptions, MAOptions):
        pass

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        models = augmented(self, target)
        return gmi_search(self.name, self.config, labels, prior, generator, seed,
                          lom_term(self, target, models, generator), {"augmented_models": len(models)})


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(GMILOMMA)
