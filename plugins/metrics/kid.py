"""KID, the Kernel Inception Distance (Binkowski et al., ICLR 2018, https://arxiv.org/abs/1801.01401):
the unbiased estimate of the squared MMD between the Inception features of the reconstructions and of the
private images of the attacked identities (``ctx.attacked``; every private identity when ``None``) under the
cubic polynomial kernel ``k(a, b) = (aᵀb / d + 1)³``, averaged over ``subsets`` random subsets of
``subset_size`` samples per set (100 x 1000 in the paper and torch-fidelity; fewer when fewer samples exist),
with its standard deviation over subsets. Unlike FID it is unbiased, so it can be compared across sample
counts. Lower is closer to the private data.

Same Inception and the same local weights file as ``fid`` (``pt_inception-2015-12-05-6726825d.pth``, option
``weights``, else ``$INVERTKIT_CACHE/weights/`` or the torch hub checkpoints folder; never downloaded).
Subsets are drawn with a seeded generator, so a value is reproducible."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.metric import Metric, MetricContext
from invertkit.core.metrics import features, fid_inception_for, kid, reference_features, reference_images
from invertkit.plugins.metrics.fid import InceptionConfig


class KID(Metric):
    name = "kid"
    paper = "https://arxiv.org/abs/1801.01401"
    keys = ("kid", "kid_std")
    higher_is_better = {"kid": False}  # kid_std is the spread of the estimate over subsets, descriptive
    summary = "Kernel Inception Distance (unbiased polynomial MMD) to the attacked identities' private images."

    class Config(InceptionConfig):
        subsets: int = Field(100, ge=1, le=10000, description="number of random subsets")
        subset_size: int = Field(1000, ge=2, le=100000, description="samples per subset (capped at the set sizes)")
        seed: int = Field(0, ge=0, description="seed of the subset draws")

    def __init__(self, ctx: MetricContext, config=None) -> None:  # noqa: ANN001
        super().__init__(ctx, config)
        self.net = fid_inception_for(self.config.weights, ctx.device)

    def reset(self) -> None:
        self.feats: list[Tensor] = []

    def update(self, images: Tensor, labels: Tensor) -> None:
        if len(images):
            self.feats.append(features(self.net, images, self.ctx.device, self.config.batch_size))

    def compute(self) -> dict[str, float]:
        gen = torch.cat(self.feats) if self.feats else torch.zeros(0, 0)
        ref_images = reference_images(self.ctx)
        if len(gen) < 2 or len(ref_images) < 2:
            return {"kid": float("nan"), "kid_std": float("nan")}
        ref = reference_features(self.net, ref_images, self.ctx.device, self.config.batch_size)
        c = self.config
        mean, std = kid(gen, ref, c.subsets, c.subset_size, c.seed)
        return {"kid": mean, "kid_std": std}


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(KID)
