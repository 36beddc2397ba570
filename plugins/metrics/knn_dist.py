"""KNN distance (GMI, KEDMI): for each reconstruction of identity y, the L2 distance in the evaluation
model's feature space to the *nearest* private training image of y, averaged. Lower means closer to
the private data."""

from __future__ import annotations

import torch
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.metric import Metric, MetricContext


class KNNDistance(Metric):
    name = "knn-dist"
    keys = ("knn_dist",)
    higher_is_better = {"knn_dist": False}
    summary = "Mean L2 distance (evaluation-model features) to the nearest private image of the same identity."

    def __init__(self, ctx: MetricContext, config=None) -> None:  # noqa: ANN001
        super().__init__(ctx, config)
        with torch.no_grad():
            feats = [ctx.eval_features(ctx.private_images[i : i + 512].to(ctx.device)).cpu()
                     for i in range(0, len(ctx.private_images), 512)]
        self.ref = torch.cat(feats).double()
        self.ref_labels = ctx.private_labels.cpu()

    def reset(self) -> None:
        self.sum = 0.0
        self.count = 0

    def update(self, images: Tensor, labels: Tensor) -> None:
        if len(images) == 0:
            return
        with torch.no_grad():
            f = self.ctx.eval_features(images.to(self.ctx.device)).cpu().double()
        d = torch.cdist(f, self.ref)  # (N, M)
        same = labels.cpu()[:, None] == self.ref_labels[None, :]
        d = torch.where(same, d, torch.full_like(d, float("inf")))
        nearest = d.min(dim=1).values
        nearest = nearest[torch.isfinite(nearest)]
        self.sum += float(nearest.sum())
        self.count += int(nearest.numel())

    def compute(self) -> dict[str, float]:
        return {"knn_dist": self.sum / self.count if self.count else float("nan")}


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(KNNDistance)
