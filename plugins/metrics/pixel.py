"""Pixel-space similarity: MSE, PSNR and SSIM between each reconstruction and a reference image, averaged
over reconstructions (per-image PSNR and SSIM, then the mean).

The reference is the nearest (pixel L2) private image of the reconstruction's identity — or, when
``ctx.extras["paired_reference"]`` is set, the given image: a tensor ``(N, C, H, W)`` in ``[0, 1]`` aligned
with the reconstructions in the order they reach ``update`` (all calls concatenated; the bench calls
``update`` once, so it is aligned with the result's images). Use it for template/embedding inversion,
where each reconstruction has a known source image (the face whose leaked template was inverted).

SSIM is Wang et al. 2004 (https://doi.org/10.1109/TIP.2003.819861) with the paper's settings: an 11-tap
Gaussian window with sigma 1.5, population (co)variances, K1 = 0.01, K2 = 0.03, data range 1, the SSIM
map averaged over the pixels whose window lies inside the image, channels averaged — equal to
scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1)``. For images smaller than 11 pixels the map is averaged over the central crop of the
largest odd window that fits (scikit-image's ``win_size``), the Gaussian filter still using mirror
(``reflect``) boundaries. PSNR is ``10 log10(data_range² / MSE)`` with MSE floored at 1e-10 (at most 100 dB
for images in [0, 1]). The SSIM constants, sigma and data range are options with the paper's defaults."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from invertkit.core.errors import ShapeError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.metric import Metric, MetricContext
from invertkit.core.metrics import AlignedExtra, nearest_same_identity

MSE_FLOOR = 1e-10


def _gaussian_taps(sigma: float) -> Tensor:
    radius = int(3.5 * sigma + 0.5)  # scipy.ndimage's radius for truncate=3.5: 11 taps at sigma 1.5
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _mirror_index(n: int, pad: int) -> Tensor:
    """Indices padding a length-``n`` axis by ``pad`` with half-sample symmetric (scipy 'reflect') edges."""
    i = torch.arange(-pad, n + pad) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def _filter(x: Tensor, taps: Tensor) -> Tensor:
    """Separable filter of ``(B, H, W)`` with mirror boundaries; the output has the input's size."""
    r = (len(taps) - 1) // 2
    h, w = x.shape[-2:]
    x = x[:, _mirror_index(h, r)][:, :, _mirror_index(w, r)]
    x = F.conv2d(x[:, None], taps.view(1, 1, -1, 1))
    x = F.conv2d(x, taps.view(1, 1, 1, -1))
    return x[:, 0]


def ssim(a: Tensor, b: Tensor, *, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
         data_range: float = 1.0) -> Tensor:
    """Per-image mean SSIM of ``(N, C, H, W)`` images (float64), channels averaged (see the module doc)."""
    if a.shape != b.shape or a.dim() != 4:
        raise ShapeError(f"ssim needs two (N, C, H, W) batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    n, c, h, w = a.shape
    taps = _gaussian_taps(sigma).to(a.device)
    side = min(h, w) if min(h, w) % 2 else min(h, w) - 1
    win = min(len(taps), side)
    if win < 1:
        raise ShapeError(f"images of size {h}x{w} are too small for SSIM")
    x, y = a.double().reshape(n * c, h, w), b.double().reshape(n * c, h, w)
    ux, uy = _filter(x, taps), _filter(y, taps)
    vx = _filter(x * x, taps) - ux * ux
    vy = _filter(y * y, taps) - uy * uy
    vxy = _filter(x * y, taps) - ux * uy
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    p = (win - 1) // 2
    s = s[:, p : h - p, p : w - p]
    return s.reshape(n, c, -1).mean(2).mean(1)


class PixelSimilarity(Metric):
    name = "pixel"
    needs = frozenset({"private"})
    paper = "https://doi.org/10.1109/TIP.2003.819861"
    keys = ("mse", "psnr", "ssim")
    higher_is_better = {"mse": False, "psnr": True, "ssim": True}
    summary = "MSE / PSNR / SSIM to the nearest private image of the identity (or to a paired reference)."

    class Config(ComponentConfig):
        sigma: float = Field(1.5, gt=0.0, le=10.0, description="SSIM Gaussian window sigma (Wang et al.: 1.5, 11 taps)")
        k1: float = Field(0.01, gt=0.0, lt=1.0, description="SSIM constant K1 (Wang et al.: 0.01)")
        k2: float = Field(0.03, gt=0.0, lt=1.0, description="SSIM constant K2 (Wang et al.: 0.03)")
        data_range: float = Field(1.0, gt=0.0, description="dynamic range of the pixel values (images in [0, 1]: 1)")

    def __init__(self, ctx: MetricContext, config=None) -> None:  # noqa: ANN001
        self.paired = AlignedExtra(ctx, "paired_reference")
        super().__init__(ctx, config)

    def reset(self) -> None:
        self.paired.reset()
        self.sums = {"mse": 0.0, "psnr": 0.0, "ssim": 0.0}
        self.count = 0

    def update(self, images: Tensor, labels: Tensor) -> None:
        if len(images) == 0:
            return
        images = images.detach().cpu()
        if self.paired.present:
            ref = self.paired.take(len(images)).detach().cpu()
            if ref.shape != images.shape:
                raise ShapeError(f"ctx.extras['paired_reference'] rows have shape {tuple(ref.shape[1:])}, "
                                 f"the reconstructions {tuple(images.shape[1:])}")
        else:
            idx = nearest_same_identity(images, labels, self.ctx.private_images, self.ctx.private_labels)
            keep = idx >= 0
            images, ref = images[keep], self.ctx.private_images[idx[keep]].detach().cpu()
        if len(images) == 0:
            return
        mse = ((images.double() - ref.double()) ** 2).flatten(1).mean(1)
        c = self.config
        psnr = 10 * torch.log10(c.data_range**2 / mse.clamp(min=MSE_FLOOR))
        self.sums["mse"] += float(mse.sum())
        self.sums["psnr"] += float(psnr.sum())
        self.sums["ssim"] += float(ssim(images, ref, sigma=c.sigma, k1=c.k1, k2=c.k2, data_range=c.data_range).sum())
        self.count += len(images)

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            return {k: math.nan for k in self.keys}
        return {k: v / self.count for k, v in self.sums.items()}


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(PixelSimilarity)
