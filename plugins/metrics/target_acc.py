"""Target-side figures: how often the *target itself* (undefended, the evaluator's copy: no budget, not the
attacker's queries) classifies a reconstruction as the identity it was made for, and its mean confidence in it.

This is what a bench can report for a model the user brings without an evaluation model: the attack's own
objective, read back. It is one opinion and a biased one (an attack optimises exactly this, and adversarial
noise scores here without looking like anyone), so the report says so, and ``acc@1`` by an independent
evaluation model, when the user gives one, is the figure to trust.
"""

from __future__ import annotations

from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.plugins.metrics.attack_acc import AttackAccuracy


class TargetAccuracy(AttackAccuracy):
    name = "target-acc"
    needs = frozenset({"target"})
    paper = ""
    keys = ("target_acc@1", "target_acc@5", "target_acc@1_class_std", "target_conf")
    higher_is_better = {"target_acc@1": True, "target_acc@5": True, "target_conf": True}
    summary = "Top-1/top-5 accuracy and mean confidence of the undefended target itself on the reconstructions."

    def scores(self, images: Tensor) -> Tensor:
        return self.ctx.target_logits(images)


@hookimpl
def invertkit_register_metrics(register) -> None:  # noqa: ANN001
    register(TargetAccuracy)
