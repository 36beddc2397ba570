"""What the attribute-inference attacks (``marginal``, ``fredrikson``, ``csmia``, ``lomia``) share: reading the
attacked records from the attack's context, querying the target on a record with a candidate sensitive value, and
the result (each attacked record completed with the inferred value).

How attribute inference fits the bench (design (a) of issue 15): an attribute attack is an ordinary
:class:`~invertkit.core.interfaces.attack.Attack`. On a records target the bench hands it, in
``self.context.extras`` (:func:`invertkit.core.bench.targets.attacked_records`), what the attacker of Fredrikson et
al. (2014) and Mehnaz et al. (2022) knows: ``schema`` (the columns; which one-hot block is the sensitive attribute),
``records`` (the attacked private training records, sensitive columns zeroed) and ``record_labels`` (their labels,
also the ``labels`` argument of ``run``). It talks to the target only through its view; the public split
(``context.public_images``: complete records of other people) gives priors and statistics. Its
``AttackResult.images`` are the records completed with the inferred value, one row per attacked record in order, and
the ``attribute-acc`` metric compares that block with the truth on the evaluator's side.
"""

from __future__ import annotations

import torch
from torch import Tensor

from invertkit.core.data.records import RecordSchema
from invertkit.core.errors import UsageError
from invertkit.core.interfaces.results import AttackResult


def attacked(attack, labels: Tensor) -> tuple[RecordSchema, Tensor, Tensor]:  # noqa: ANN001 - an Attack
    """``(schema, known records, labels)`` from ``attack.context.extras``; a usage error when the target is not a
    records target (images) or the labels do not match the records."""
    extras = getattr(attack.context, "extras", None) or {}
    schema, records = extras.get("schema"), extras.get("records")
    if not isinstance(schema, RecordSchema) or records is None:
        raise UsageError(f"attack '{attack.name}' infers a sensitive attribute of records: it runs on a records "
                         "(tabular) target, whose bench cell gives the attacked records (context.extras 'schema', "
                         "'records', 'record_labels')")
    records = schema.mask(torch.as_tensor(records, dtype=torch.float32))  # never read the sensitive block
    labels = torch.as_tensor(labels).long()
    if len(labels) != len(records):
        raise UsageError(f"attack '{attack.name}': {len(labels)} labels for {len(records)} attacked records")
    return schema, records, labels


def public_records(attack, schema: RecordSchema) -> tuple[Tensor, Tensor | None]:  # noqa: ANN001
    """The attacker's public records (complete, other people) and their labels."""
    ctx = attack.context
    x = getattr(ctx, "public_images", None)
    if x is None or len(x) == 0 or x.dim() != 2 or x.shape[1] != schema.width:
        raise UsageError(f"attack '{attack.name}' needs public records of {schema.width} columns "
                         "(context.public_images)")
    y = getattr(ctx, "public_labels", None)
    return x.float(), (None if y is None else torch.as_tensor(y).long())


def batched(fn, x: Tensor, batch_size: int) -> Tensor:  # noqa: ANN001
    """``fn`` over ``x`` in batches of ``batch_size`` rows, concatenated (one query per row)."""
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) else fn(x)


def completed(name: str, schema: RecordSchema, records: Tensor, labels: Tensor, inferred: Tensor,
              scores: Tensor | None = None, **extras: object) -> AttackResult:
    """The attack's result: each record with its sensitive block set to the inferred value."""
    images = schema.fill(records, inferred.long())
    return AttackResult(name, images, labels, scores if scores is not None else torch.zeros(len(labels)), 0, 0.0, 0,
                        {}, extras=dict(extras))
