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
from invertkit.core.interfaces.metric import MetricContext
from invertkit.core.metrics import check_labels, class_centroids
from invertkit.plugins.metrics._distance import MeanFeatureDistance


class FeatureDistance(MeanFeatureDistance):
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
        self.centroids, self.present = class_centroids(self.private_features(), ctx.private_labels, ctx.num_classes)

    def distances(self, feats: Tensor, labels: Tensor) -> Tensor:
        labels = check_labels(labels, self.ctx.num_classes)
        keep = self.present[labels]
        d2 = ((feats[keep] - self.centroids[labels[keep]]) ** 2).sum(1)
        return d2 if self.config.squared else d2.sqrt()


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(FeatureDistance)
