"""Attack accuracy: how often the *evaluation model* (not the target) classifies a reconstruction as the
identity it was made for — top-1 and top-5 (GMI, KEDMI and successors report both;
https://arxiv.org/abs/1911.07135) — and the spread of top-1 accuracy over identities
(``acc@1_class_std``: the population standard deviation, over the identities attacked, of each
identity's top-1 accuracy; 0 when every identity is recovered equally often) and ``eval_conf``, the evaluation
model's mean softmax probability of the identity (PPA's "confidence"; finer-grained than acc@1 when attacks
are near its ceiling)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.metric import Metric


class AttackAccuracy(Metric):
    name = "attack-acc"
    needs = frozenset({"eval"})
    paper = "https://arxiv.org/abs/1911.07135"
    keys = ("acc@1", "acc@5", "acc@1_class_std", "eval_conf")
    # acc@1_class_std is descriptive (how uneven the attack is across identities), not a strength score
    higher_is_better = {"acc@1": True, "acc@5": True, "eval_conf": True}
    summary = "Top-1/top-5 accuracy of the evaluation model on the reconstructions (and its spread over identities)."

    def scores(self, images: Tensor) -> Tensor:
        """The judging model's logits: the evaluation model's."""
        return self.ctx.eval_logits(images)

    def reset(self) -> None:
        self.correct1 = 0
        self.correct5 = 0
        self.total = 0
        self.conf: list[float] = []  # per reconstruction; math.fsum makes the mean independent of batching
        self.per_class: dict[int, list[int]] = {}  # identity -> [top-1 correct, total]

    def update(self, images: Tensor, labels: Tensor) -> None:
        if len(images) == 0:
            return
        with torch.no_grad():
            logits = self.scores(images.to(self.ctx.device)).float().cpu()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        labels = labels.cpu()
        hit1 = top[:, 0] == labels
        self.conf.extend(logits.double().softmax(1).gather(1, labels[:, None]).squeeze(1).tolist())
        self.correct1 += int(hit1.sum())
        self.correct5 += int((top == labels[:, None]).any(1).sum())
        self.total += len(labels)
        for y, h in zip(labels.tolist(), hit1.tolist()):
            c = self.per_class.setdefault(int(y), [0, 0])
            c[0] += int(h)
            c[1] += 1

    def compute(self) -> dict[str, float]:
        if self.total == 0:
            return {k: float("nan") for k in self.keys}
        # sorted by identity: the value is the same, bit for bit, however the results were batched
        accs = torch.tensor([c / t for _, (c, t) in sorted(self.per_class.items())], dtype=torch.float64)
        values = (self.correct1 / self.total, self.correct5 / self.total, float(accs.std(unbiased=False)),
                  math.fsum(self.conf) / self.total)
        return dict(zip(self.keys, values))


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(AttackAccuracy)
