"""Template (embedding) inversion metrics, as template-reconstruction work reports them (Mai et al., "On the
Reconstruction of Face Images from Deep Face Templates", TPAMI 2019, https://arxiv.org/abs/1703.00832:
verification rate of reconstructions "@ FAR 0.1%"; the success attack rate of later template-inversion work):

- ``template_cos``: mean cosine similarity between the template of each reconstruction and its target
  template;
- ``sar``: the success attack rate, the fraction of reconstructions whose similarity exceeds the
  recognition system's decision ``threshold``;
- ``threshold``: calibrated on the private images at the false-match rate ``fmr`` (default 1e-3): the
  (1 - fmr) quantile of impostor similarities (pairs of different identities), taken conservatively as an
  order statistic so that at most ``floor(fmr * impostors)`` impostor pairs lie strictly above it; with
  fewer than ``1 / fmr`` impostor pairs this is the largest impostor similarity (the smallest achievable
  false-match rate, 0). ``fmr_achieved`` is the impostor fraction above it;
- ``tmr@fmr``: the system's true-match rate at that threshold (genuine pairs of the private images).

A *template* is the output of the recognition model: ``ctx.extras["template_features"]`` (a callable
``images -> (N, D)``) if given, else ``ctx.eval_features``. The *target templates* are
``ctx.extras["templates"]``: a tensor ``(N, D)`` of the leaked templates aligned with the reconstructions
in the order they reach ``update`` (all calls concatenated; the bench calls ``update`` once). Without it,
the target template of a reconstruction is the centroid of its identity's normalised private templates
(and reconstructions of identities with no private image are left out). Note that a centroid is more
similar to its identity's images than a single image is, so ``sar`` against centroids is an upper bound
on ``sar`` against single leaked templates. Calibration uses at most ``max_calibration_images`` private
images (a seeded random subset) so that the pair count stays bounded."""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.errors import ShapeError, UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.metric import Metric, MetricContext
from invertkit.core.metrics import AlignedExtra, check_labels, class_centroids, features, private_features


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def calibrate(templates: Tensor, labels: Tensor, fmr: float) -> tuple[float, float, float]:
    """(threshold, achieved false-match rate, true-match rate) of cosine similarity over all pairs."""
    t = _unit(templates.double())
    sim = t @ t.T
    iu = torch.triu_indices(len(t), len(t), offset=1)
    s = sim[iu[0], iu[1]]
    same = labels[iu[0]] == labels[iu[1]]
    impostor, genuine = s[~same], s[same]
    if len(impostor) == 0:
        return math.nan, math.nan, math.nan
    srt = impostor.sort().values
    allowed = math.floor(fmr * len(srt))
    thr = float(srt[len(srt) - 1 - allowed])
    fmr_achieved = float((impostor > thr).double().mean())
    tmr = float((genuine > thr).double().mean()) if len(genuine) else math.nan
    return thr, fmr_achieved, tmr


class CalibrationConfig(ComponentConfig):
    """Options of a metric that calibrates a recognition threshold on the private images (also
    ``template-attack``'s)."""

    max_calibration_images: int = Field(2000, ge=2, le=50000,
                                        description="private images used to calibrate the threshold")
    seed: int = Field(0, ge=0, description="seed of the calibration subset")
    batch_size: int = Field(512, ge=1, le=65536, description="images per recognition-model forward pass")


class TemplateInversion(Metric):
    name = "template"
    needs = frozenset({"eval", "private"})
    paper = "https://arxiv.org/abs/1703.00832"
    keys = ("template_cos", "sar", "tmr@fmr", "threshold", "fmr_achieved")
    # tmr@fmr, threshold and fmr_achieved describe the recognition system's operating point (descriptive)
    higher_is_better = {"template_cos": True, "sar": True}
    summary = "Template inversion: cosine to the target template, success attack rate at a calibrated FMR."

    class Config(CalibrationConfig):
        fmr: float = Field(1e-3, gt=0.0, lt=1.0, description="false-match rate of the decision threshold")

    def __init__(self, ctx: MetricContext, config=None) -> None:  # noqa: ANN001
        self.targets = AlignedExtra(ctx, "templates")
        super().__init__(ctx, config)
        c = self.config
        extractor = ctx.extras.get("template_features")
        if extractor is not None and not callable(extractor):
            raise UsageError("ctx.extras['template_features'] must be a callable images -> (N, D) templates")
        self.extract = extractor if extractor is not None else ctx.eval_features
        if extractor is None:
            priv = private_features(ctx, c.batch_size)
        else:
            priv = features(extractor, ctx.private_images, ctx.device, c.batch_size)
        labels = check_labels(ctx.private_labels, ctx.num_classes)
        cent, self.present = class_centroids(_unit(priv), labels, ctx.num_classes)
        self.centroids = _unit(cent)
        sel = torch.arange(len(priv))
        if len(priv) > c.max_calibration_images:
            g = torch.Generator().manual_seed(c.seed)
            sel = torch.randperm(len(priv), generator=g)[: c.max_calibration_images].sort().values
        self.threshold, self.fmr_achieved, self.tmr = calibrate(priv[sel], labels[sel], c.fmr)

    def reset(self) -> None:
        self.targets.reset()
        self.sum_cos = 0.0
        self.success = 0
        self.count = 0

    def update(self, images: Tensor, labels: Tensor) -> None:
        if len(images) == 0:
            return
        f = _unit(features(self.extract, images, self.ctx.device, self.config.batch_size))
        if self.targets.present:
            target = self.targets.take(len(images)).detach().cpu().double()
            if target.shape != f.shape:
                raise ShapeError(f"ctx.extras['templates'] rows have {target.shape[1:]} entries, the "
                                 f"recognition model gives {f.shape[1:]}")
            target = _unit(target)
        else:
            labels = check_labels(labels, self.ctx.num_classes)
            keep = self.present[labels]
            f, target = f[keep], self.centroids[labels[keep]]
        cos = (f * target).sum(1)
        self.sum_cos += float(cos.sum())
        self.success += int((cos > self.threshold).sum())
        self.count += len(cos)

    def compute(self) -> dict[str, float]:
        n = self.count
        return {
            "template_cos": self.sum_cos / n if n else math.nan,
            "sar": self.success / n if n and not math.isnan(self.threshold) else math.nan,
            "tmr@fmr": self.tmr,
            "threshold": self.threshold,
            "fmr_achieved": self.fmr_achieved,
        }


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(TemplateInversion)
