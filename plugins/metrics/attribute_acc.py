"""``attribute-acc``: how well an attribute-inference attack recovered the sensitive attribute of the attacked
records, against the prior-only baseline.

On a records cell (:func:`invertkit.core.bench.targets.attacked_records`) the attack's result rows are the attacked
records completed with the inferred value, in order; the metric decodes the sensitive block of each and compares it
with the record's true value in the private training split (the evaluator's side: ``MetricContext.extras``
``schema`` and ``record_index``). Keys:

* ``attr_acc``: the fraction of records whose value was inferred;
* ``attr_f1``: the macro F1 over the attribute's values (scikit-learn's ``f1_score(average="macro")``: the values
  present in the truth or the inference), the figure Mehnaz et al. (2022) report beside accuracy because a skewed
  attribute makes the majority guess accurate;
* ``attr_base_acc``, ``attr_base_f1``: the same for the prior-only baseline (every record given the value most
  frequent in the public records, as the ``marginal`` attack does);
* ``attr_adv``: ``attr_acc - attr_base_acc``, the attack's advantage over the prior.
"""

from __future__ import annotations

import torch
from torch import Tensor

from invertkit.core.errors import UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.metric import Metric


def macro_f1(pred: Tensor, true: Tensor) -> float:
    """Macro F1 over the values present in ``true`` or ``pred``."""
    values = torch.unique(torch.cat([pred, true]))
    if len(values) == 0:
        return float("nan")
    f1 = []
    for v in values:
        tp = int(((pred == v) & (true == v)).sum())
        fp = int(((pred == v) & (true != v)).sum())
        fn = int(((pred != v) & (true == v)).sum())
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(sum(f1) / len(f1))


class AttributeAccuracy(Metric):
    name = "attribute-acc"
    #: the accuracy/F1 evaluation of attribute inference of Mehnaz et al. (USENIX Security 2022)
    paper = "https://www.usenix.org/conference/usenixsecurity22/presentation/mehnaz"
    summary = "Sensitive-attribute accuracy and macro F1 of attribute inference on records, and the marginal baseline's"
    needs = frozenset({"private"})
    keys = ("attr_acc", "attr_f1", "attr_base_acc", "attr_base_f1", "attr_adv")
    higher_is_better = {"attr_acc": True, "attr_f1": True, "attr_adv": True}

    def reset(self) -> None:
        self.inferred: list[Tensor] = []
        self.seen = 0

    def _schema(self):  # noqa: ANN202
        schema = self.ctx.extras.get("schema")
        if schema is None or "record_index" not in self.ctx.extras:
            raise UsageError("metric 'attribute-acc' judges attribute inference on a records (tabular) target; this "
                             "cell has no attacked records")
        return schema

    def update(self, images: Tensor, labels: Tensor) -> None:
        schema = self._schema()
        if images.dim() != 2 or images.shape[1] != schema.width:
            raise UsageError(f"metric 'attribute-acc': results of shape {tuple(images.shape)} are not records of "
                             f"{schema.width} columns")
        self.inferred.append(schema.decode(images.cpu()))
        self.seen += len(images)

    def compute(self) -> dict[str, float]:
        schema = self._schema()
        index = torch.as_tensor(self.ctx.extras["record_index"])
        if self.seen == 0:
            return {k: float("nan") for k in self.keys}
        if self.seen != len(index):
            raise UsageError(f"metric 'attribute-acc': {self.seen} results for {len(index)} attacked records")
        pred = torch.cat(self.inferred)
        true = schema.decode(self.ctx.private_images[index].cpu())
        public = self.ctx.extras.get("public_records")
        base_value = int(schema.marginal(public).argmax()) if public is not None and len(public) else int(
            torch.bincount(true, minlength=schema.num_values).argmax())
        base = torch.full_like(true, base_value)
        acc = float((pred == true).double().mean())
        base_acc = float((base == true).double().mean())
        return {"attr_acc": acc, "attr_f1": macro_f1(pred, true), "attr_base_acc": base_acc,
                "attr_base_f1": macro_f1(base, true), "attr_adv": acc - base_acc}


@hookimpl
def invertkit_register_metrics(register) -> None:  # noqa: ANN001 - a Registrar
    register(AttributeAccuracy)
