"""Attack accuracy: how often the *evaluation model* (not the target) classifies a reconstruction as the
identity it was made for — top-1 and top-5 (GMI, KEDMI and successors report both)."""

from __future__ import annotations

import torch
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.metric import Metric


class AttackAccuracy(Metric):
    name = "attack-acc"
    keys = ("acc@1", "acc@5")
    higher_is_better = {"acc@1": True, "acc@5": True}
    summary = "Top-1/top-5 accuracy of the evaluation model on the reconstructions."

    def reset(self) -> None:
        self.correct1 = 0
        self.correct5 = 0
        self.total = 0

    def update(self, images: Tensor, labels: Tensor) -> None:
        if len(images) == 0:
            return
        with torch.no_grad():
            logits = self.ctx.eval_logits(images.to(self.ctx.device)).cpu()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        labels = labels.cpu()
        self.correct1 += int((top[:, 0] == labels).sum())
        self.correct5 += int((top == labels[:, None]).any(1).sum())
        self.total += len(labels)

    def compute(self) -> dict[str, float]:
        if self.total == 0:
            return {"acc@1": float("nan"), "acc@5": float("nan")}
        return {"acc@1": self.correct1 / self.total, "acc@5": self.correct5 / self.total}


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(AttackAccuracy)
