"""``batch-recon``: how well a reconstruction attack got back the very images a release was computed from — a
federated client's batch from its update (:mod:`invertkit.plugins.attacks.inverting_gradients`).

The reference is ``ctx.extras["paired_reference"]``, the evaluator's copy of those images (the bench puts it
there from the target backend's ``evaluator_extras``: the client's batch; never the attack's), so the metric
needs ``paired`` and is "not applicable" on any cell without it. The reconstructions come in no recoverable
order, so each is paired with one reference image by the Hungarian assignment on pixel MSE
(``inverting_gradients.match``, as Geiping et al.'s evaluation of a batch; with more reconstructions than images,
as a class-level attack's samples on the same view, each image gets its closest distinct one; with fewer, the
image figures are NaN), then: PSNR (``10 log10(1 / MSE)``,
per image, averaged), SSIM (Wang et al. 2004, :func:`invertkit.plugins.metrics.pixel.ssim`) and LPIPS (Zhang et
al., CVPR 2018, arXiv 1801.03924; AlexNet, :mod:`invertkit.plugins.metrics.lpips_dist`, when its backbone weights
are on disk, else NaN) — ``inverting_gradients.scores``. With ``paired_labels`` also given, ``batch_labels`` is
the share of the batch's labels the reconstructions carry (as multisets: the labels inferred from the update).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from invertkit.core.errors import ShapeError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.metric import Metric


class BatchRecon(Metric):
    name = "batch-recon"
    needs = frozenset({"paired"})
    paper = "https://arxiv.org/abs/2003.14053"
    keys = ("batch_psnr", "batch_ssim", "batch_lpips", "batch_labels")
    higher_is_better = {"batch_psnr": True, "batch_ssim": True, "batch_lpips": False, "batch_labels": True}
    summary = ("PSNR, SSIM and LPIPS of reconstructions against the images the release was computed from (a "
               "client's batch), after Hungarian matching; and the share of its labels recovered.")

    def reset(self) -> None:
        self._images: list[Tensor] = []
        self._labels: list[Tensor] = []

    def update(self, images: Tensor, labels: Tensor) -> None:
        self._images.append(images.detach().float().cpu())
        self._labels.append(labels.detach().long().cpu())

    def compute(self) -> dict[str, float]:
        from invertkit.plugins.attacks.inverting_gradients import scores

        truth = self.ctx.extras["paired_reference"].detach().float().cpu()
        recon = torch.cat(self._images) if self._images else truth[:0]
        if tuple(recon.shape[1:]) != tuple(truth.shape[1:]):
            raise ShapeError(f"metric '{self.name}': reconstructions of shape {tuple(recon.shape[1:])} for "
                             f"reference images of shape {tuple(truth.shape[1:])}")
        out = {"batch_psnr": math.nan, "batch_ssim": math.nan, "batch_lpips": math.nan, "batch_labels": math.nan}
        if len(recon) >= len(truth) > 0:
            got = scores(recon, truth)
            out.update(batch_psnr=got["psnr"], batch_ssim=got["ssim"], batch_lpips=got["lpips"])
        ref_labels = self.ctx.extras.get("paired_labels")
        if ref_labels is not None and self._labels:
            n = int(max(int(ref_labels.max()), int(torch.cat(self._labels).max()))) + 1
            hits = torch.minimum(torch.bincount(torch.cat(self._labels), minlength=n),
                                 torch.bincount(ref_labels.long().cpu(), minlength=n)).sum()
            out["batch_labels"] = float(hits) / len(ref_labels)
        return out


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(BatchRecon)
