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

from pydantic import Field
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.metrics import kid, reference_features
from invertkit.plugins.metrics.fid import InceptionConfig, InceptionSetMetric


class KID(InceptionSetMetric):
    name = "kid"
    needs = frozenset({"private"})
    paper = "https://arxiv.org/abs/1801.01401"
    keys = ("kid", "kid_std")
    higher_is_better = {"kid": False}  # kid_std is the spread of the estimate over subsets, descriptive
    summary = "Kernel Inception Distance (unbiased polynomial MMD) to the attacked identities' private images."

    class Config(InceptionConfig):
        subsets: int = Field(100, ge=1, le=10000, description="number of random subsets")
        subset_size: int = Field(1000, ge=2, le=100000, description="samples per subset (capped at the set sizes)")
        seed: int = Field(0, ge=0, description="seed of the subset draws")

    def score(self, gen: Tensor, ref_images: Tensor) -> dict[str, float]:
        ref = reference_features(self.net, ref_images, self.ctx.device, self.config.batch_size)
        c = self.config
        mean, std = kid(gen, ref, c.subsets, c.subset_size, c.seed)
        return {"kid": mean, "kid_std": std}


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(KID)
