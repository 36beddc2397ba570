"""``marginal``: the prior-only baseline of attribute inference. Every attacked record gets the sensitive value most
frequent in the attacker's public records (the marginal prior's mode), whatever the target says: no query.

What an attribute attack must beat (Fredrikson et al., USENIX Security 2014, compare against it; Mehnaz et al.,
USENIX Security 2022, call it the naive baseline: "always predict the majority value"). The ``attribute-acc``
metric reports its figures beside every attack's too (``attr_base_acc``, ``attr_base_f1``).
"""

from __future__ import annotations

import torch

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.results import AttackResult
from invertkit.plugins.attacks.attribute_common import attacked, completed, public_records


class Marginal(Attack):
    name = "marginal"
    paper = "https://www.usenix.org/conference/usenixsecurity14/technical-sessions/presentation/fredrikson_matthew"
    summary = ("Attribute-inference baseline: the sensitive value most frequent in public records for every "
               "attacked record; no query.")
    requires = frozenset()
    needs_prior = False

    class Config(AttackConfig):
        """No options."""

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        schema, records, labels = attacked(self, labels)
        public, _ = public_records(self, schema)
        p = schema.marginal(public)
        mode = int(p.argmax())
        inferred = torch.full((len(records),), mode, dtype=torch.long)
        return completed(self.name, schema, records, labels, inferred, torch.full((len(records),), float(p[mode])),
                         prior=p.tolist())


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001 - a Registrar
    register(Marginal)
