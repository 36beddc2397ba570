"""Fréchet distance in the *evaluation model's* feature space (``fid_eval``): the FID formula of Heusel et
al. 2017 (https://arxiv.org/abs/1706.08500), ``||mu_r - mu_p||² + tr(S_r + S_p - 2 (S_r S_p)^½)``, between
Gaussians fitted to the features of the reconstructions and of the private images of the attacked identities
(``ctx.attacked``; every private identity when ``None``), with the evaluation model in place of Inception.
Needs no pretrained download, so it works for every scenario; its values are comparable only between runs
with the same evaluation model. Lower means the reconstructions' feature
distribution is closer to the private data's."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.metric import Metric
from invertkit.core.metrics import GaussianStats, features, frechet_distance, reference_eval_features


class EvalFID(Metric):
    name = "fid-eval"
    needs = frozenset({"eval", "private"})
    paper = "https://arxiv.org/abs/1706.08500"
    keys = ("fid_eval",)
    higher_is_better = {"fid_eval": False}
    summary = "Fréchet distance to the attacked identities' private images in the evaluation model's features."

    class Config(ComponentConfig):
        batch_size: int = Field(512, ge=1, le=65536, description="images per evaluation-model forward pass")

    def reset(self) -> None:
        self.feats: list[Tensor] = []

    def update(self, images: Tensor, labels: Tensor) -> None:
        if len(images):
            self.feats.append(features(self.ctx.eval_features, images, self.ctx.device, self.config.batch_size))

    def compute(self) -> dict[str, float]:
        gen = torch.cat(self.feats) if self.feats else torch.zeros(0, 0)
        ref = reference_eval_features(self.ctx, self.config.batch_size)
        if len(gen) < 2 or len(ref) < 2:
            return {"fid_eval": float("nan")}
        return {"fid_eval": frechet_distance(GaussianStats.from_features(gen), GaussianStats.from_features(ref))}


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(EvalFID)
