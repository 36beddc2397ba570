"""Feature distance (KEDMI, Chen et al., ICCV 2021, https://arxiv.org/abs/2010.04092; PLG-MI, Yuan et al.,
AAAI 2023, https://arxiv.org/abs/2302.09814): the L2 distance in the *evaluation model's* feature space
between each reconstruction and the centroid (mean feature) of its identity's private images, averaged
over reconstructions. Lower means closer to the private identity. Reconstructions of an identity with
no private image are left out. ``squared=true`` reports squared distances instead."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.metric import Metric, MetricContext
from invertkit.core.metrics import check_labels, class_centroids, features, private_features


class FeatureDistance(Metric):
    name = "feature-dist"
    paper = "https://arxiv.org/abs/2010.04092"
    keys = ("feat_dist",)
    higher_is_better = {"feat_dist": False}
    summary = "Mean L2 distance (evaluation-model features) to the centroid of the identity's private images."

    class Config(ComponentConfig):
        squared: bool = Field(False, description="report the squared L2 distance instead of the distance")
        batch_size: int = Field(512, ge=1, le=65536, description="images per evaluation-model forward pass")

    def __init__(self, ctx: MetricContext, config=None) -> None:  # noqa: ANN001
        super().__init__(ctx, config)
        ref = private_features(ctx, self.config.batch_size)
        self.centroids, self.present = class_centroids(ref, ctx.private_labels, ctx.num_classes)

    def reset(self) -> None:
        self.sum = 0.0
        self.count = 0

    def update(self, images: Tensor, labels: Tensor) -> None:
        if len(images) == 0:
            return
        f = features(self.ctx.eval_features, images, self.ctx.device, self.config.batch_size)
        labels = check_labels(labels, self.ctx.num_classes)
        keep = self.present[labels]
        d2 = ((f[keep] - self.centroids[labels[keep]]) ** 2).sum(1)
        d = d2 if self.config.squared else d2.sqrt()
        self.sum += float(d.sum())
        self.count += int(keep.sum())

    def compute(self) -> dict[str, float]:
        return {"feat_dist": self.sum / self.count if self.count else float("nan")}


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(FeatureDistance)
