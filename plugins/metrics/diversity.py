"""Diversity of the reconstructions of each identity: the mean pairwise L2 distance, in the evaluation
model's feature space, between reconstructions of the same identity — averaged first over the pairs of an
identity, then over the identities with at least two reconstructions (each identity weighs the same).
Higher means more diverse reconstructions (less mode collapse onto one image per identity), the property
that distribution-recovering attacks such as KEDMI (Chen et al., ICCV 2021, https://arxiv.org/abs/2010.04092)
aim at. It measures variety, not success: read it beside accuracy or the distance to the private data."""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.metric import Metric
from invertkit.core.metrics import features


class Diversity(Metric):
    name = "diversity"
    needs = frozenset({"eval"})
    paper = "https://arxiv.org/abs/2010.04092"
    keys = ("diversity",)
    higher_is_better = {"diversity": True}
    summary = "Mean pairwise evaluation-feature distance among reconstructions of the same identity."

    class Config(ComponentConfig):
        batch_size: int = Field(512, ge=1, le=65536, description="images per evaluation-model forward pass")

    def reset(self) -> None:
        self.per_identity: dict[int, list[Tensor]] = {}

    def update(self, images: Tensor, labels: Tensor) -> None:
        if len(images) == 0:
            return
        f = features(self.ctx.eval_features, images, self.ctx.device, self.config.batch_size)
        labels = labels.cpu()
        for y in labels.unique().tolist():
            self.per_identity.setdefault(int(y), []).append(f[labels == y])

    def compute(self) -> dict[str, float]:
        means = []
        for y in sorted(self.per_identity):
            f = torch.cat(self.per_identity[y])
            n = len(f)
            if n < 2:
                continue
            iu = torch.triu_indices(n, n, offset=1)
            means.append(float(torch.cdist(f, f)[iu[0], iu[1]].mean()))
        return {"diversity": sum(means) / len(means) if means else math.nan}


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(Diversity)
