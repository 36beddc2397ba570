"""KEDMI + LOM: KEDMI's distributional search with the logit-maximisation identity loss of Nguyen et al.,
"Re-thinking Model Inversion Attacks Against Deep Neural Networks" (CVPR 2023), https://arxiv.org/abs/2304.01669.

White-box. KEDMI's loop (Adam lr 0.02 on a Gaussian per identity, ``-log D(G(z)) + lambda * L_id``,
lambda 100; LOMMA's KEDMI runs 2,400 iterations, the default here) with LOM's identity loss
``-logit_y + lambda_reg * mean_d (phi(x) - p_reg)_d ** 2`` (``lambda_reg = 1``, ``p_reg`` the mean target
feature of ~5,000 public images, from ``self.context.public_images``).
"""

from __future__ import annotations

from pydantic import Field

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.plugins.attacks._identity import KEDMISearch, LOMOptions, kedmi_search, lom_term


class KEDMILOM(Attack):
    name = "kedmi-lom"
    paper = "https://arxiv.org/abs/2304.01669"
    summary = "KEDMI's distributional search with LOM's identity loss (-logit_y + feature regulariser)."
    requires = frozenset({C.GRAD, C.LOGITS, C.FEATURES})

    class Config(KEDMISearch, LOMOptions):
        iterations: int = Field(2400, ge=1, description="Adam steps (LOMMA's KEDMI config: 2400)")

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        return kedmi_search(self.name, self.config, labels, prior, generator, seed,
                            lom_term(self, target, (), generator))


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(KEDMILOM)
