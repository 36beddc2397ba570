"""``csmia`` and ``lomia``: the model-inversion attribute inference attacks of Mehnaz et al., "Are Your Sensitive
Attributes Private? Novel Model Inversion Attribute Inference Attacks on Classification Models" (USENIX Security
2022, https://www.usenix.org/conference/usenixsecurity22/presentation/mehnaz), after the official code
https://github.com/smehnaz/Black-box-Model-Inversion-Attribute-Inference (``attack.py``).

Both query the target on each attacked record with every candidate value ``v`` of the sensitive attribute filled in
(``len(values)`` queries a record) and compare the predicted label with the record's known label ``y``.

* **CSMIA** (confidence-score based; ``Attack.run_CSMIA``, full-knowledge branch): case 1, exactly one candidate is
  predicted ``y``: that one; case 2, several are: among them the one whose prediction is the most confident
  (``confidence_score_for_correct_y`` masked by the matches, argmax, ties drawn at random as ``random.choice``);
  case 3, none is: the one whose (wrong) prediction is the least confident (``total_confidence_scores``, argmin,
  ties at random). The confidence is the released top-1 confidence (BigML's ``probability`` of the predicted class
  for DNNs), so CSMIA needs ``topk`` (a top-1 API suffices); under ``label-only`` the plan skips it.
* **LOMIA** (label-only; ``prepare_LOMIA_attack_dataset`` + ``run_LOMIA``): the case-1 records (exactly one candidate
  predicted ``y``) get that candidate as a pseudo-label; an attack model is trained on them to predict the sensitive
  value from the record's other attributes and its label ``y``, and infers the value of every attacked record
  (``run_LOMIA`` queries the ensemble for all of them, case-1 records included).

Defaults are the official code's: no tunable parameter in CSMIA; LOMIA's attack model is BigML's default ensemble
(the resource ids in ``attack_models_dict``: a bagged decision forest, BigML's default of 10 models), here
scikit-learn's ``BaggingClassifier`` over ``DecisionTreeClassifier`` with ``n_estimators = 10``.

Deliberate differences: the attack model is scikit-learn's, trained locally, not BigML's hosted ensemble (the
same family and size); the label ``y`` enters it one-hot. When no record is in case 1 (or all of case 1 share one
value) the attack model is that constant, or, with no case-1 record at all, the public marginal's mode (the official
code would fail to train). Random tie-breaks use the attack's seeded generator. Partial-knowledge CSMIA
(unknown non-sensitive attributes) is not implemented: the bench's records have them all.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability
from invertkit.core.interfaces.results import AttackResult
from invertkit.plugins.attacks.attribute_common import attacked, batched, completed, public_records

PAPER = "https://www.usenix.org/conference/usenixsecurity22/presentation/mehnaz"


def candidate_labels(target, schema, records: Tensor, batch_size: int, *, confidences: bool):  # noqa: ANN001
    """For every candidate value: the target's label of each record with it, and (``confidences``) that label's
    released confidence (``topk(x, 1)``). Shapes ``(N, V)``."""
    preds, confs = [], []
    for v in range(schema.num_values):
        x = schema.fill(records, v)
        if confidences:
            out = batched(lambda b: torch.cat(target.topk(b, 1), dim=1), x, batch_size).cpu()
            confs.append(out[:, 0].double())
            preds.append(out[:, 1].long())
        else:
            preds.append(batched(target.label, x, batch_size).cpu().long())
    return torch.stack(preds, 1), (torch.stack(confs, 1) if confidences else None)


def random_argmax(scores: Tensor, allowed: Tensor, generator: torch.Generator) -> Tensor:
    """Per row, one of the allowed columns with the highest score, drawn uniformly among ties."""
    s = torch.where(allowed, scores, torch.full_like(scores, -float("inf")))
    best = s.max(dim=1, keepdim=True).values
    ties = (s == best) & allowed
    draw = torch.rand(ties.shape, generator=generator, dtype=torch.float64)
    return torch.where(ties, draw, torch.full_like(draw, -1.0)).argmax(dim=1)


def csmia_rule(match: Tensor, confidence: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """CSMIA's three cases: the inferred column and the case (1, 2, 3) of each row."""
    n_match = match.sum(dim=1)
    everyone = torch.ones_like(match)
    case2 = random_argmax(confidence, match, generator)       # the most confident of the matches
    case3 = random_argmax(-confidence, everyone, generator)   # the least confident (wrong) prediction
    case1 = match.to(torch.int64).argmax(dim=1)
    inferred = torch.where(n_match == 1, case1, torch.where(n_match > 1, case2, case3))
    case = torch.where(n_match == 1, 1, torch.where(n_match > 1, 2, 3))
    return inferred, case


class CSMIA(Attack):
    name = "csmia"
    paper = PAPER
    summary = ("Confidence-score MIAI (Mehnaz et al. 2022): the candidate sensitive value whose query is predicted "
               "the known label; ties by the most confident match, no match by the least confident prediction")
    requires = frozenset({Capability.TOPK})
    needs_prior = False

    class Config(AttackConfig):
        batch_size: int = Field(1024, ge=1, description="records per query batch (one query per record either way)")

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        schema, records, labels = attacked(self, labels)
        preds, confs = candidate_labels(target, schema, records, self.config.batch_size, confidences=True)
        inferred, case = csmia_rule(preds == labels.unsqueeze(1), confs, generator)
        cases = {f"case{k}": int((case == k).sum()) for k in (1, 2, 3)}
        return completed(self.name, schema, records, labels, inferred, confs.gather(1, inferred[:, None])[:, 0].float(),
                         cases=cases)


class LOMIA(Attack):
    name = "lomia"
    paper = PAPER
    summary = ("Label-only MIAI (Mehnaz et al. 2022): records where exactly one candidate value is predicted the "
               "known label train a bagged decision forest that infers every record's sensitive value")
    requires = frozenset({Capability.LABEL})
    needs_prior = False

    class Config(AttackConfig):
        batch_size: int = Field(1024, ge=1, description="records per query batch (one query per record either way)")
        n_estimators: int = Field(10, ge=1, description="trees in the attack ensemble (BigML's default ensemble: 10)")

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        from sklearn.ensemble import BaggingClassifier
        from sklearn.tree import DecisionTreeClassifier

        schema, records, labels = attacked(self, labels)
        preds, _ = candidate_labels(target, schema, records, self.config.batch_size, confidences=False)
        match = preds == labels.unsqueeze(1)
        case1 = match.sum(dim=1) == 1
        pseudo = match.to(torch.int64).argmax(dim=1)
        features = torch.cat([schema.known(records),
                              torch.nn.functional.one_hot(labels, target.num_classes).to(records.dtype)], dim=1).numpy()
        values = torch.unique(pseudo[case1])
        if len(values) == 0:  # no case-1 record: nothing to learn from; the public marginal's mode
            public, _ = public_records(self, schema)
            inferred = torch.full((len(records),), int(schema.marginal(public).argmax()), dtype=torch.long)
        elif len(values) == 1:
            inferred = torch.full((len(records),), int(values[0]), dtype=torch.long)
        else:
            forest = BaggingClassifier(DecisionTreeClassifier(), n_estimators=self.config.n_estimators,
                                       random_state=int(seed))
            forest.fit(features[case1.numpy()], pseudo[case1].numpy())
            inferred = torch.as_tensor(forest.predict(features), dtype=torch.long)
        return completed(self.name, schema, records, labels, inferred, case1.float(),
                         case1=int(case1.sum()), case1_values=torch.bincount(pseudo[case1], minlength=schema.num_values).tolist())


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001 - a Registrar
    register(CSMIA)
    register(LOMIA)
