"""What the feature-space distance metrics share (``feature-dist``, ``knn-dist``): the evaluation model's
features of the reconstructions, and a running mean of one distance per reconstruction."""

from __future__ import annotations

from abc import abstractmethod

from torch import Tensor

from invertkit.core.interfaces.metric import Metric
from invertkit.core.metrics import features, private_features


class MeanFeatureDistance(Metric):
    """The mean over reconstructions of :meth:`distances` in the evaluation model's feature space (float64 on
    the CPU); a reconstruction it gives no distance (an identity without private images) is left out. The
    one key of ``keys`` is reported (NaN before any distance)."""

    @property
    def batch_size(self) -> int:
        """Images per evaluation-model forward pass (the config's ``batch_size`` where it has one)."""
        return int(getattr(self.config, "batch_size", 512))

    def private_features(self) -> Tensor:
        """The evaluation model's features of the private images (computed once per metric context)."""
        return private_features(self.ctx, self.batch_size)

    @abstractmethod
    def distances(self, feats: Tensor, labels: Tensor) -> Tensor:
        """One distance per reconstruction counted, from its features ``(N, D)`` and its labels."""

    def reset(self) -> None:
        self.sum = 0.0
        self.count = 0

    def update(self, images: Tensor, labels: Tensor) -> None:
        if len(images) == 0:
            return
        d = self.distances(features(self.ctx.eval_features, images, self.ctx.device, self.batch_size), labels)
        self.sum += float(d.sum())
        self.count += int(d.numel())

    def compute(self) -> dict[str, float]:
        return {self.keys[0]: self.sum / self.count if self.count else float("nan")}
