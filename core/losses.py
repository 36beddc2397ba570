"""Identity losses shared by several model-inversion attacks.

Each function maps a batch of outputs of a classifier and the attacked identities ``labels`` (``(N,)``
class indices) to a *per-sample* loss of shape ``(N,)`` that an attack minimises; the attacks (and the
shared loop :func:`invertkit.core.optim.optimise`) sum or average them.

* :func:`cross_entropy` - ``-log softmax(logits)_y`` (GMI, KEDMI).
* :func:`logit_loss` - ``-logit_y``: LOM's logit maximisation (Nguyen et al., CVPR 2023,
  https://arxiv.org/abs/2304.01669; their ``nn.NLLLoss`` applied to raw logits).
* :func:`feature_regulariser` - LOM's ``mean_d (phi(x) - p_reg)_d ** 2``: keeps the penultimate features
  near the mean of the public images' features, so that maximising a logit cannot simply inflate the
  feature norm (their ``reg_loss``: a mean over the feature dimensions, not a sum).
* :func:`max_margin` - PLG-MI's ``-logit_y + max_{j != y} logit_j`` (Yuan et al., AAAI 2023,
  https://arxiv.org/abs/2302.09814).
* :func:`poincare` - PPA's Poincare loss (Struppek et al., ICML 2022, https://arxiv.org/abs/2201.12179):
  the hyperbolic distance in the Poincare ball between the L1-normalised logits and the one-hot label
  shrunk to ``1 - eps``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from invertkit.core.errors import ShapeError

__all__ = ["cross_entropy", "feature_regulariser", "logit_loss", "max_margin", "poincare"]


def _check(scores: Tensor, labels: Tensor) -> None:
    if scores.dim() != 2 or labels.shape != (scores.shape[0],):
        raise ShapeError(f"an identity loss needs (N, K) scores and (N,) labels, got {tuple(scores.shape)} "
                         f"and {tuple(labels.shape)}")


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """``-log softmax(logits)[y]`` per sample (``logits`` may also be log-probabilities)."""
    _check(logits, labels)
    return F.cross_entropy(logits, labels, reduction="none")


def logit_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """LOM's identity loss: minus the raw logit of the attacked class, ``-logits[i, y_i]``."""
    _check(logits, labels)
    return -logits.gather(1, labels.view(-1, 1)).squeeze(1)


def feature_regulariser(features: Tensor, p_reg: Tensor) -> Tensor:
    """LOM's feature regulariser ``mean_d (features - p_reg)**2`` per sample; ``p_reg`` is ``(D,)`` (the
    fixed variant: one point for all samples) or ``(N, D)`` (one drawn point per sample)."""
    f = features.flatten(1)
    p = p_reg.reshape(-1, f.shape[1]) if p_reg.dim() > 1 else p_reg.view(1, -1)
    if p.shape[1] != f.shape[1] or p.shape[0] not in (1, f.shape[0]):
        raise ShapeError(f"feature_regulariser: features {tuple(f.shape)} and p_reg {tuple(p_reg.shape)} do not match")
    return (f - p.to(f.dtype)).pow(2).mean(1)


def max_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """PLG-MI's max-margin loss ``-logit_y + max_{j != y} logit_j`` per sample (negative once ``y`` wins)."""
    _check(logits, labels)
    real = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return others.max(1).values - real


def poincare(logits: Tensor, labels: Tensor, eps: float = 1e-4) -> Tensor:
    """PPA's Poincare loss per sample: ``arccosh(1 + 2 ||u - v||^2 / ((1 - ||u||^2)(1 - ||v||^2)))`` with
    ``u = logits / ||logits||_1`` and ``v = clamp(one_hot(y), 0, 1 - eps)`` (official code: eps 1e-4)."""
    _check(logits, labels)
    u = logits / logits.abs().sum(1, keepdim=True).clamp_min(1e-12)
    v = F.one_hot(labels, logits.shape[1]).to(logits.dtype).clamp(0.0, 1.0 - eps)
    u2, v2 = u.pow(2).sum(1), v.pow(2).sum(1)
    delta = 2 * (u - v).pow(2).sum(1) / ((1 - u2).clamp_min(1e-12) * (1 - v2))
    return torch.acosh(1 + delta)
