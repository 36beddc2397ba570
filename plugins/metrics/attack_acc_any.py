"""Attack accuracy, "any restart succeeds" (GMI, Zhang et al., CVPR 2020, https://arxiv.org/abs/1911.07135):
GMI runs several random restarts per identity and counts the identity as recovered if *any* of its
reconstructions is classified as that identity by the evaluation model. ``acc@1_any`` (``acc@5_any``) is
the fraction of the identities attacked with at least one top-1 (top-5) hit. It is never below the
per-sample ``acc@1`` of ``attack-acc`` and grows with the number of samples per identity."""

from __future__ import annotations

import torch
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.metric import Metric


class AttackAccuracyAny(Metric):
    name = "attack-acc-any"
    needs = frozenset({"eval"})
    paper = "https://arxiv.org/abs/1911.07135"
    keys = ("acc@1_any", "acc@5_any")
    higher_is_better = {"acc@1_any": True, "acc@5_any": True}
    summary = "Fraction of identities for which any reconstruction is classified correctly (GMI's restarts)."

    def reset(self) -> None:
        self.hit1: dict[int, bool] = {}
        self.hit5: dict[int, bool] = {}

    def update(self, images: Tensor, labels: Tensor) -> None:
        if len(images) == 0:
            return
        with torch.no_grad():
            logits = self.ctx.eval_logits(images.to(self.ctx.device)).cpu()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        labels = labels.cpu()
        h1 = (top[:, 0] == labels).tolist()
        h5 = (top == labels[:, None]).any(1).tolist()
        for y, a, b in zip(labels.tolist(), h1, h5):
            self.hit1[y] = self.hit1.get(y, False) or bool(a)
            self.hit5[y] = self.hit5.get(y, False) or bool(b)

    def compute(self) -> dict[str, float]:
        n = len(self.hit1)
        if n == 0:
            return {"acc@1_any": float("nan"), "acc@5_any": float("nan")}
        return {"acc@1_any": sum(self.hit1.values()) / n, "acc@5_any": sum(self.hit5.values()) / n}


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(AttackAccuracyAny)
