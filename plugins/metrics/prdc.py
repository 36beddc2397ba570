"""Precision, recall, density and coverage (Naeem et al., ICML 2020, https://arxiv.org/abs/2002.09797;
official code https://github.com/clovaai/generative-evaluation-prdc) of the reconstructions ("fake")
against the private images of the attacked identities ("real"; ``ctx.attacked``, every private identity when
``None``), with k-nearest-neighbour balls (default ``k = 5``, the paper's):

- the radius of a sample is the distance to its k-th nearest neighbour within its own set;
- precision: fraction of fakes inside at least one real ball; recall: fraction of reals inside at least
  one fake ball (Kynkäänniemi et al. 2019);
- density: the number of real balls containing a fake, averaged over fakes, divided by k (can exceed 1);
- coverage: fraction of reals whose ball contains at least one fake.

"Inside" is a strict ``<`` as in the official code. Features are the evaluation model's (default) or, with
``features=inception``, the FID Inception's (same local weights file as ``fid``). Distances are computed in
blocks, so the private set may be large. Recall and coverage need more than k reconstructions and private
images; otherwise they are NaN."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.metric import Metric, MetricContext
from invertkit.core.metrics import (
    features,
    fid_inception_for,
    reference_eval_features,
    reference_features,
    reference_images,
)
from invertkit.plugins.metrics.fid import InceptionConfig

BLOCK = 1024


def kth_neighbour_radii(x: Tensor, k: int) -> Tensor:
    """Distance of each row of ``x`` to its k-th nearest other row (the row itself is the 0-th)."""
    out = []
    for i in range(0, len(x), BLOCK):
        d = torch.cdist(x[i : i + BLOCK], x)
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def prdc(real: Tensor, fake: Tensor, k: int) -> dict[str, float]:
    nan = float("nan")
    real, fake = real.double(), fake.double()
    if len(real) <= k or len(fake) == 0:
        return {"precision": nan, "recall": nan, "density": nan, "coverage": nan}
    r_real = kth_neighbour_radii(real, k)
    r_fake = kth_neighbour_radii(fake, k) if len(fake) > k else None
    in_real_balls = torch.zeros(len(fake), dtype=torch.float64)  # per fake: number of real balls containing it
    recalled = covered = 0
    for i in range(0, len(real), BLOCK):
        d = torch.cdist(real[i : i + BLOCK], fake)  # (block, n_fake)
        inside = d < r_real[i : i + BLOCK, None]
        in_real_balls += inside.sum(0).double()
        covered += int((d.min(1).values < r_real[i : i + BLOCK]).sum())
        if r_fake is not None:
            recalled += int((d < r_fake[None, :]).any(1).sum())
    return {
        "precision": float((in_real_balls > 0).double().mean()),
        "recall": recalled / len(real) if r_fake is not None else nan,
        "density": float(in_real_balls.mean()) / k,
        "coverage": covered / len(real),
    }


class PRDC(Metric):
    name = "prdc"
    needs = frozenset({"eval", "private"})
    paper = "https://arxiv.org/abs/2002.09797"
    keys = ("precision", "recall", "density", "coverage")
    higher_is_better = {"precision": True, "recall": True, "density": True, "coverage": True}
    summary = "Precision / recall / density / coverage (k-NN balls) vs the attacked identities' private images."

    class Config(InceptionConfig):
        k: int = Field(5, ge=1, le=1000, description="nearest neighbours defining each ball (paper: 5)")
        features: Literal["eval", "inception"] = Field(
            "eval", description="feature space: the evaluation model's, or the FID Inception's (needs weights)")
        batch_size: int = Field(256, ge=1, le=65536, description="images per forward pass")

    def __init__(self, ctx: MetricContext, config=None) -> None:  # noqa: ANN001
        super().__init__(ctx, config)
        self.net = fid_inception_for(self.config.weights, ctx.device) if self.config.features == "inception" else None

    def reset(self) -> None:
        self.feats: list[Tensor] = []

    def update(self, images: Tensor, labels: Tensor) -> None:
        if len(images) == 0:
            return
        fn = self.net if self.net is not None else self.ctx.eval_features
        self.feats.append(features(fn, images, self.ctx.device, self.config.batch_size))

    def compute(self) -> dict[str, float]:
        fake = torch.cat(self.feats) if self.feats else torch.zeros(0, 1, dtype=torch.float64)
        if self.net is not None:
            real = reference_features(self.net, reference_images(self.ctx), self.ctx.device, self.config.batch_size)
        else:
            real = reference_eval_features(self.ctx)
        return prdc(real, fake, self.config.k)


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(PRDC)
