"""GMI + LOM: GMI's latent search with the logit-maximisation identity loss of Nguyen et al.,
"Re-thinking Model Inversion Attacks Against Deep Neural Networks" (CVPR 2023), https://arxiv.org/abs/2304.01669.

White-box. GMI's loop (``-D(G(z)) + lambda * L_id``, Nesterov SGD lr 0.02, momentum 0.9, 2,400 iterations as the official recovery scripts,
z clipped to [-1, 1], lambda 100) with the identity loss

    L_id(x) = -logit_y(T(x)) + lambda_reg * mean_d (phi(x) - p_reg)_d ** 2          (lambda_reg = 1)

where ``phi`` is the target's penultimate feature map and ``p_reg`` the mean of ``phi`` over ~5,000 public
images (official ``get_act_reg``/``reg_loss``; the code draws a point from ``N(mean, std^2)`` and then
overwrites it with the mean, so ``p_reg = "mean"`` is the default and ``"sampled"`` the variant described in
the paper). Needs the attacker's public images from ``self.context.public_images``.
"""

from __future__ import annotations

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.plugins.attacks._identity import GMISearch, LOMOptions, gmi_search, lom_term


class GMILOM(Attack):
    name = "gmi-lom"
    paper = "https://arxiv.org/abs/2304.01669"
    summary = "GMI's latent search with LOM's identity loss: -logit_y + feature regulariser around public features."
    requires = frozenset({C.GRAD, C.LOGITS, C.FEATURES})

    class Config(GMISearch, LOMOptions):
        pass

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        return gmi_search(self.name, self.config, labels, prior, generator, seed,
                          lom_term(self, target, (), generator))


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(GMILOM)
