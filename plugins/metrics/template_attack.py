"""Template-inversion attack figures as that literature reports them: Mai et al., "On the Reconstruction of Face
Images from Deep Face Templates" (TPAMI 2019, https://arxiv.org/abs/1703.00832; verification of reconstructions
at a fixed false-accept rate, type I and type II) and the template-inversion work of Otroshi Shahreza, George
and Marcel (e.g. "Face Reconstruction from Face Embeddings using Adapter to a Face Foundation Model", 2024,
https://arxiv.org/abs/2411.03960: the success attack rate, SAR, at a threshold calibrated at a false-match rate,
and its transfer to other recognition models).

Each reconstruction ``x_hat`` inverts one leaked template ``t = F(x)`` of a private image ``x`` (the bench's
``leaked_templates``: ``ctx.extras["templates"]`` the undefended templates, ``["template_index"]`` the rows of
the sources in the private split, ``["template_features"]`` the recognition system's extractor ``F``; without
``template_features`` the evaluation model's features stand in for ``F``):

- ``tia_cos``: mean cosine between ``F(x_hat)`` and ``t``; ``tia_l2``: mean L2 distance ``||F(x_hat) - t||`` of the
  raw templates;
- ``sar1@1e-3``, ``sar1@1e-2`` (type I): the fraction of reconstructions the system accepts against the
  template's own image, ``cos(F(x_hat), t) > tau``; ``tau`` is calibrated on the private images at that FMR
  (:func:`~invertkit.plugins.metrics.template.calibrate`: at most ``floor(fmr x impostors)`` impostor pairs of
  private images score above it);
- ``sar2@1e-3``, ``sar2@1e-2`` (type II): the fraction of (reconstruction, other image of the same identity)
  pairs accepted — the other private images of the source's identity, the source itself excluded (where
  ``template_index`` is not given, every private image of the identity); a reconstruction whose identity has no
  other image contributes no pair;
- ``transfer_sar1@1e-3``, ``transfer_sar2@1e-3``: the same under a second recognition model the attack never
  used, the evaluation model (its own threshold, calibrated the same way); NaN without one;
- ``fd_src``: an FID-like distance, the Fréchet distance between the second model's features of the
  reconstructions and of their source images (the literature's FID uses Inception; on 8x8 digits an Inception
  feature is meaningless, and the second recognition model is the feature space the task defines); NaN without
  an evaluation model or with fewer than two reconstructions.

The two FMRs are the protocol's and fixed (the keys name them); ``max_calibration_images`` bounds the pairs.
SSIM and PSNR against the source image are the ``pixel`` metric's (the bench sets its ``paired_reference``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from invertkit.core.errors import ShapeError, UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.metric import Metric, MetricContext
from invertkit.core.metrics import AlignedExtra, GaussianStats, check_labels, features, frechet_distance
from invertkit.plugins.metrics.template import CalibrationConfig, _unit, calibrate

FMRS = (1e-3, 1e-2)


def _tag(fmr: float) -> str:
    return f"{fmr:.0e}".replace("e-0", "e-")


def type1_accepts(recon: Tensor, templates: Tensor, threshold: float) -> Tensor:
    """Per reconstruction: accepted against its own template (cosine above ``threshold``)."""
    return (_unit(recon.double()) * _unit(templates.double())).sum(1) > threshold


def type2_accepts(recon: Tensor, labels: Tensor, private: Tensor, private_labels: Tensor, exclude: Tensor | None,
                  threshold: float) -> tuple[int, int]:
    """(accepted pairs, pairs) of reconstructions against the *other* private images of their identity: each
    reconstruction ``i`` with every private row of label ``labels[i]`` except ``exclude[i]`` (``-1``/``None``:
    none excluded)."""
    sim = _unit(recon.double()) @ _unit(private.double()).T
    same = labels.view(-1, 1) == private_labels.view(1, -1)
    if exclude is not None:
        rows = torch.arange(len(recon))
        ok = exclude >= 0
        same[rows[ok], exclude[ok]] = False
    return int(((sim > threshold) & same).sum()), int(same.sum())


class _Recogniser:
    """One recognition model's side of the metric: its private templates and thresholds at :data:`FMRS`."""

    def __init__(self, extract, ctx: MetricContext, cfg) -> None:  # noqa: ANN001
        self.extract = extract
        self.private = features(extract, ctx.private_images, ctx.device, cfg.batch_size).double()
        labels = check_labels(ctx.private_labels, ctx.num_classes)
        sel = torch.arange(len(self.private))
        if len(sel) > cfg.max_calibration_images:
            g = torch.Generator().manual_seed(cfg.seed)
            sel = torch.randperm(len(sel), generator=g)[: cfg.max_calibration_images].sort().values
        self.thresholds = {fmr: calibrate(self.private[sel], labels[sel], fmr)[0] for fmr in FMRS}


class TemplateAttack(Metric):
    name = "template-attack"
    needs = frozenset({"private"})
    paper = "https://arxiv.org/abs/1703.00832"
    keys = ("tia_cos", "tia_l2", "sar1@1e-3", "sar1@1e-2", "sar2@1e-3", "sar2@1e-2", "transfer_sar1@1e-3",
            "transfer_sar2@1e-3", "fd_src", "threshold@1e-3", "threshold@1e-2")
    higher_is_better = {"tia_cos": True, "tia_l2": False, "sar1@1e-3": True, "sar1@1e-2": True, "sar2@1e-3": True,
                        "sar2@1e-2": True, "transfer_sar1@1e-3": True, "transfer_sar2@1e-3": True, "fd_src": False}
    summary = ("Template inversion: cosine/L2 to the leaked template, SAR type I/II at FMR 1e-3 and 1e-2, transfer "
               "SAR on a second recogniser, Fréchet distance to the source images.")

    Config = CalibrationConfig

    def __init__(self, ctx: MetricContext, config=None) -> None:  # noqa: ANN001
        self.targets = AlignedExtra(ctx, "templates")
        self.index = AlignedExtra(ctx, "template_index")
        super().__init__(ctx, config)
        if not self.targets.present:
            raise UsageError("metric 'template-attack' needs ctx.extras['templates'], the leaked templates aligned "
                             "with the reconstructions (the bench sets it on an embedder target)")
        extract = ctx.extras.get("template_features", ctx.eval_features)
        if extract is None or not callable(extract):
            raise UsageError("metric 'template-attack' needs the recognition model: ctx.extras['template_features'] "
                             "(a callable images -> templates) or an evaluation model")
        self.system = _Recogniser(extract, ctx, self.config)
        self.second = _Recogniser(ctx.eval_features, ctx, self.config) if ctx.eval_features is not None and \
            "template_features" in ctx.extras else None
        self.labels = check_labels(ctx.private_labels, ctx.num_classes)

    def reset(self) -> None:
        self.targets.reset()
        self.index.reset()
        self.sums = {"cos": 0.0, "l2": 0.0}
        self.count = 0
        self.type1 = {("system", f): 0 for f in FMRS} | {("second", f): 0 for f in FMRS}
        self.type2 = {("system", f): [0, 0] for f in FMRS} | {("second", f): [0, 0] for f in FMRS}
        self.second_feats: list[Tensor] = []
        self.source_rows: list[Tensor] = []

    def update(self, images: Tensor, labels: Tensor) -> None:
        if len(images) == 0:
            return
        labels = check_labels(labels, self.ctx.num_classes)
        t = self.targets.take(len(images)).detach().cpu().double().reshape(len(images), -1)
        exclude = self.index.take(len(images)).cpu().long() if self.index.present else None
        f = features(self.system.extract, images, self.ctx.device, self.config.batch_size).double()
        if t.shape != f.shape:
            raise ShapeError(f"ctx.extras['templates'] rows have {t.shape[1]} entries, the recognition model gives "
                             f"{f.shape[1]}")
        self.sums["cos"] += float((_unit(f) * _unit(t)).sum())
        self.sums["l2"] += float((f - t).norm(dim=1).sum())
        self.count += len(images)
        sides = [("system", self.system, f, t)]
        if self.second is not None:
            g = features(self.second.extract, images, self.ctx.device, self.config.batch_size).double()
            self.second_feats.append(g)
            if exclude is not None:
                self.source_rows.append(exclude)
            src = self.second.private[exclude] if exclude is not None else None
            if src is not None:
                sides.append(("second", self.second, g, src))
        for side, rec, feats, own in sides:
            for fmr in FMRS:
                thr = rec.thresholds[fmr]
                self.type1[(side, fmr)] += int(type1_accepts(feats, own, thr).sum())
                ok, n = type2_accepts(feats, labels, rec.private, self.labels, exclude, thr)
                self.type2[(side, fmr)][0] += ok
                self.type2[(side, fmr)][1] += n

    def _fd(self) -> float:
        if self.second is None or not self.source_rows or self.count < 2:
            return math.nan
        gen = torch.cat(self.second_feats)
        src = self.second.private[torch.cat(self.source_rows)]
        return frechet_distance(GaussianStats.from_features(gen), GaussianStats.from_features(src))

    def compute(self) -> dict[str, float]:
        n = self.count
        out: dict[str, float] = {"tia_cos": self.sums["cos"] / n if n else math.nan,
                                 "tia_l2": self.sums["l2"] / n if n else math.nan}
        for fmr in FMRS:
            out[f"sar1@{_tag(fmr)}"] = self.type1[("system", fmr)] / n if n else math.nan
            ok, pairs = self.type2[("system", fmr)]
            out[f"sar2@{_tag(fmr)}"] = ok / pairs if pairs else math.nan
        have_second = self.second is not None and bool(self.source_rows)
        out["transfer_sar1@1e-3"] = self.type1[("second", 1e-3)] / n if n and have_second else math.nan
        ok, pairs = self.type2[("second", 1e-3)]
        out["transfer_sar2@1e-3"] = ok / pairs if pairs and have_second else math.nan
        out["fd_src"] = self._fd()
        for fmr in FMRS:
            out[f"threshold@{_tag(fmr)}"] = self.system.thresholds[fmr]
        return out


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(TemplateAttack)
