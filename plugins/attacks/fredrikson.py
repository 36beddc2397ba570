"""``fredrikson``: the maximum-a-posteriori attribute inference of Fredrikson et al., "Privacy in Pharmacogenetics:
An End-to-End Case Study of Personalized Warfarin Dosing" (USENIX Security 2014,
https://www.usenix.org/conference/usenixsecurity14/technical-sessions/presentation/fredrikson_matthew), in the
categorical form of its follow-up (Fredrikson, Jha, Ristenpart, CCS 2015, section 3) that Mehnaz et al. (USENIX
Security 2022) re-run as their FJRMIA baseline (official code: https://github.com/smehnaz/Black-box-Model-Inversion-Attribute-Inference,
``attack.py`` ``Attack.run_FJRMIA``).

For an attacked record with known attributes ``x_K`` and known label ``y``, for each candidate value ``v`` of the
sensitive attribute: query the target on ``x_K`` with ``v`` filled in, and score ``v`` by ``pi(y, f(x_K, v)) * p(v)``,
where ``pi(y, y')`` is the model's confusion (the probability that it predicts ``y'`` for a record whose true label is
``y``: the row-normalised confusion matrix ``c[i] = cm[i] / sum(cm[i])``, as ``run_FJRMIA``) and ``p(v)`` the marginal
prior of ``v``; the inferred value is the argmax (the first on ties, as ``np.argmax``). It reads labels only
(``requires = {label}``), so it runs through a label-only API.

Deliberate differences: the papers take ``pi`` from the model's published performance statistics (BigML's
confusion matrix) and ``p`` from public marginals; invertkit publishes neither, so the attacker measures both on its
public records (complete records of other people from the same population): ``p`` is their empirical marginal, and
``pi`` the confusion of the target's labels on them, one query per public record, counted (``confusion =
"public-queries"``). The 2014 paper's regression likelihood (warfarin dose) is the categorical confusion here, as the
2015 paper and FJRMIA use for classifiers. Only the sensitive attribute is unknown (the 2014 paper also
marginalises unknown non-sensitive attributes; the bench's records have them all).
"""

from __future__ import annotations

import torch
from pydantic import Field

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability
from invertkit.core.interfaces.results import AttackResult
from invertkit.plugins.attacks.attribute_common import attacked, batched, completed, public_records


def confusion(target_labels: torch.Tensor, true_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Row-normalised confusion ``c[true, predicted]`` (a row without records stays uniform)."""
    cm = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    cm.index_put_((true_labels.long(), target_labels.long()), torch.ones(len(true_labels), dtype=torch.float64),
                  accumulate=True)
    rows = cm.sum(1, keepdim=True)
    return torch.where(rows > 0, cm / rows.clamp_min(1.0), torch.full_like(cm, 1.0 / num_classes))


class Fredrikson(Attack):
    name = "fredrikson"
    paper = "https://www.usenix.org/conference/usenixsecurity14/technical-sessions/presentation/fredrikson_matthew"
    summary = ("MAP attribute inference (Fredrikson et al. 2014): for each candidate sensitive value, the target's "
               "label on the record with it, weighted by the confusion pi(y, label) and the public marginal prior")
    requires = frozenset({Capability.LABEL})
    needs_prior = False

    class Config(AttackConfig):
        batch_size: int = Field(1024, ge=1, description="records per query batch (one query per record either way)")
        confusion: str = Field("public-queries", pattern="^public-queries$",
                               description="where pi comes from: the target's labels on the public records, "
                                           "counted (invertkit publishes no performance statistics)")

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        schema, records, labels = attacked(self, labels)
        public, public_labels = public_records(self, schema)
        if public_labels is None:
            from invertkit.core.errors import UsageError

            raise UsageError("attack 'fredrikson' measures the target's confusion on labelled public records")
        bs = self.config.batch_size
        p = schema.marginal(public)
        pi = confusion(batched(target.label, public, bs).cpu(), public_labels, target.num_classes)
        scores = torch.stack([pi[labels, batched(target.label, schema.fill(records, v), bs).cpu()] * p[v]
                              for v in range(schema.num_values)], dim=1)
        inferred = scores.argmax(dim=1)
        posterior = scores.max(dim=1).values / scores.sum(dim=1).clamp_min(1e-12)
        return completed(self.name, schema, records, labels, inferred, posterior.float(), prior=p.tolist(),
                         confusion=pi.tolist())


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001 - a Registrar
    register(Fredrikson)
