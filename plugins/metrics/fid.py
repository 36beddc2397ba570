"""FID (Heusel et al., NeurIPS 2017, https://arxiv.org/abs/1706.08500) between the reconstructions and the
private images of the attacked identities (``ctx.attacked``; every private identity when ``None``: the
official KEDMI-lineage evaluation compares with the attacked identities' private images only), with
pytorch-fid's port of the TensorFlow FID Inception (2048-d pool features;
https://github.com/mseitzer/pytorch-fid): images in ``[0, 1]``, grey repeated to three channels, resized
bilinearly to 299x299 as pytorch-fid does. Lower is closer to the private data.

The Inception weights are read from a local file, never downloaded: ``pt_inception-2015-12-05-6726825d.pth``
(published at https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth)
in the option ``weights`` (the file or its folder), else in ``$INVERTKIT_CACHE/weights/`` or the torch hub
checkpoints folder (where pytorch-fid itself caches it). The file is read with
``torch.load(weights_only=True)``, which accepts only tensors. FID is biased for small sample counts
(compare values only at equal numbers of reconstructions); ``kid`` is the unbiased alternative."""

from __future__ import annotations

from abc import abstractmethod

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.metric import Metric, MetricContext
from invertkit.core.metrics import (
    GaussianStats,
    features,
    fid_inception_for,
    frechet_distance,
    reference_images,
    reference_stats,
)


class InceptionConfig(ComponentConfig):
    weights: str | None = Field(
        None, description="path of pt_inception-2015-12-05-6726825d.pth (or its folder); default: "
        "$INVERTKIT_CACHE/weights/, then the torch hub checkpoints folder")
    batch_size: int = Field(64, ge=1, le=4096, description="images per Inception forward pass")


class InceptionSetMetric(Metric):
    """A set metric of the reconstructions' Inception features against the attacked identities' private images
    (FID, KID): the local Inception loaded once, features accumulated batch by batch; a subclass states
    :meth:`score` of the generated features against the reference images (at least 2 of each, else NaN)."""

    Config = InceptionConfig

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
            return {k: float("nan") for k in self.keys}
        return self.score(gen, ref_images)

    @abstractmethod
    def score(self, gen: Tensor, ref_images: Tensor) -> dict[str, float]:
        """The metric's keys for the generated features ``gen`` against the reference images."""


class FID(InceptionSetMetric):
    name = "fid"
    needs = frozenset({"private"})
    paper = "https://arxiv.org/abs/1706.08500"
    keys = ("fid",)
    higher_is_better = {"fid": False}
    summary = "Fréchet Inception Distance (local pytorch-fid Inception) to the attacked identities' private images."

    def score(self, gen: Tensor, ref_images: Tensor) -> dict[str, float]:
        ref = reference_stats(self.net, ref_images, self.ctx.device, self.config.batch_size)
        return {"fid": frechet_distance(GaussianStats.from_features(gen), ref)}


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(FID)
