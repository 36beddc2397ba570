"""Statistics of feature sets that the set metrics compare: Gaussian statistics and the Fréchet distance
(FID, fid-eval), the unbiased polynomial-kernel MMD and its subset estimate (KID). Metric plugins import
these from :mod:`invertkit.core.metrics`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from invertkit.core.errors import ShapeError, UsageError


# ------------------------------------------------------------------ Gaussian statistics, Fréchet distance
@dataclass
class GaussianStats:
    """Mean, a factor ``L`` of the (unbiased) covariance ``S = L Lᵀ`` and ``tr S`` of a feature set.

    ``L`` is the centred data ``Xcᵀ / sqrt(n-1)`` (``d x n``) when ``n <= d`` and the symmetric square
    root of ``S`` (``d x d``) otherwise: both exact, the first cheap for few samples in 2048 dimensions.
    """

    mean: Tensor
    factor: Tensor
    trace: float
    n: int

    @classmethod
    def from_features(cls, feats: Tensor) -> "GaussianStats":
        x = feats.double()
        n, d = x.shape
        if n < 2:
            raise UsageError(f"a covariance needs at least 2 samples, got {n}")
        mean = x.mean(0)
        xc = x - mean
        if n <= d:
            factor = xc.T / math.sqrt(n - 1)
        else:
            cov = xc.T @ xc / (n - 1)
            evals, evecs = torch.linalg.eigh((cov + cov.T) / 2)
            factor = (evecs * evals.clamp(min=0).sqrt()) @ evecs.T
        return cls(mean, factor, float((factor * factor).sum()), n)


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """``||mu_a - mu_b||² + tr S_a + tr S_b - 2 tr sqrt(S_a S_b)`` (Heusel et al. 2017, FID).

    ``tr sqrt(S_a S_b)`` is the nuclear norm of ``L_aᵀ L_b`` for any factors ``S = L Lᵀ``: the eigenvalues
    of ``S_a S_b`` are the squared singular values of ``L_aᵀ L_b``. Exact for singular covariances (no
    ``eps`` on the diagonal, no complex parts to drop, unlike ``scipy.linalg.sqrtm``)."""
    if a.mean.shape != b.mean.shape:
        raise ShapeError(f"feature dimensions differ: {a.mean.shape[0]} vs {b.mean.shape[0]}")
    tr_sqrt = float(torch.linalg.svdvals(a.factor.T @ b.factor).sum())
    diff = a.mean - b.mean
    return float(diff @ diff) + a.trace + b.trace - 2.0 * tr_sqrt


# ------------------------------------------------------------------ KID
def polynomial_mmd_unbiased(x: Tensor, y: Tensor) -> float:
    """Unbiased MMD² with the cubic polynomial kernel ``k(a, b) = (aᵀb / d + 1)³`` (Binkowski et al. 2018)."""
    m, n = len(x), len(y)
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    off_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    off_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(off_x + off_y - 2 * kxy.mean())


def kid(x: Tensor, y: Tensor, subsets: int, subset_size: int, seed: int) -> tuple[float, float]:
    """Mean and standard deviation of :func:`polynomial_mmd_unbiased` over ``subsets`` random subsets of
    ``min(subset_size, len(x), len(y))`` samples of each set, drawn without replacement (seeded)."""
    m = min(subset_size, len(x), len(y))
    if m < 2:
        return float("nan"), float("nan")
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(subsets):
        ix = torch.randperm(len(x), generator=g)[:m]
        iy = torch.randperm(len(y), generator=g)[:m]
        vals.append(polynomial_mmd_unbiased(x[ix].double(), y[iy].double()))
    v = torch.tensor(vals, dtype=torch.float64)
    return float(v.mean()), float(v.std(unbiased=False))

