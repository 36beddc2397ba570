"""KEDMI + LOMMA: KEDMI's distributional search with logit maximisation and model augmentation (Nguyen et
al., "Re-thinking Model Inversion Attacks Against Deep Neural Networks", CVPR 2023,
https://arxiv.org/abs/2304.01669; their best attack).

White-box. KEDMI's loop (Adam lr 0.02 on a Gaussian per identity, 2,400 iterations in LOMMA's config,
``-log D(G(z)) + 100 * L_id``) with LOMMA's identity loss: the logit loss averaged over the target and K
augmented models distilled from it on public data, plus ``lambda_reg = 1`` times the feature regulariser on
the target's features. Needs ``self.context.public_images``.
"""

from __future__ import annotations

from pydantic import Field

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.plugins.attacks._identity import KEDMISearch, LOMOptions, MAOptions, augmented, kedmi_search, lom_term


class KEDMILOMMA(Attack):
    name = "kedmi-lomma"
    paper = "https://arxiv.org/abs/2304.01669"
    summary = "KEDMI with LOMMA: distributional search, logit loss over target + distilled students, LOM regulariser."
    requires = frozenset({C.GRAD, C.LOGITS, C.FEATURES})

    class Config(KEDMISearch, LOMOptions, MAOptions):
        iterations: int = Field(2400, ge=1, description="Adam steps (LOMMA's KEDMI config: 2400)")

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        models = augmented(self, target)
        return kedmi_search(self.name, self.config, labels, prior, generator, seed,
                            lom_term(self, target, models, generator), {"augmented_models": len(models)})


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(KEDMILOMMA)
