"""EDM diffusion prior (Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
NeurIPS 2022, https://arxiv.org/abs/2206.00364), following the official NVlabs/edm code
(https://github.com/NVlabs/edm): ``training/networks.py`` (``EDMPrecond``), ``training/loss.py``
(``EDMLoss``), ``training/training_loop.py`` (EMA, learning-rate ramp-up), ``generate.py`` (``edm_sampler``).
Written from those files and the paper; nothing copied.

What this module implements (and the diffusion attacks FGMIA, Diff-MI and template inversion import):

* **Preconditioning** (paper Table 1): ``D(x; σ) = c_skip x + c_out F(c_in x; c_noise)`` with
  ``c_skip = σd²/(σ²+σd²)``, ``c_out = σ σd/√(σ²+σd²)``, ``c_in = 1/√(σ²+σd²)``, ``c_noise = ln(σ)/4``,
  ``σd = 0.5``; data in ``[-1, 1]`` inside the diffusion code (a :class:`~invertkit.core.interfaces.Prior`
  exposes ``[0, 1]``).
* **Training**: ``ln σ ~ N(P_mean = -1.2, P_std = 1.2²)``, loss ``λ(σ) ‖D(x + σε; σ) − x‖²`` with
  ``λ(σ) = (σ²+σd²)/(σ σd)²``; Adam (β = (0.9, 0.999), ε = 1e-8, lr 1e-3) with the official linear
  learning-rate ramp-up over ``lr_rampup_images`` (10 M images); an EMA of the weights whose half-life is
  ``ema_halflife_images`` (500 k images) capped at ``ema_rampup_ratio`` (0.05) × the images seen so far;
  non-finite gradients set to 0 as the official loop does. Condition dropout (``cond_drop``) replaces the
  condition by the null condition for classifier-free guidance (Ho & Salimans 2022,
  https://arxiv.org/abs/2207.12598).
* **Sampling** (paper Algorithm 2, ``edm_sampler``): the ρ = 7 schedule
  ``σ_i = (σ_max^{1/ρ} + i/(N−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ`` from σ_max = 80 to σ_min = 0.002, then 0;
  Heun's second-order step with an Euler step into σ = 0 (2N − 1 denoiser evaluations; N = 18) or plain Euler
  (N); stochastic churn ``γ_i = min(S_churn/N, √2 − 1)`` for ``σ_i ∈ [S_min, S_max]``, with noise scaled by
  ``S_noise`` (defaults 0, 0, ∞, 1: deterministic). Guidance ``D = D_null + w (D_cond − D_null)``.
* **Denoiser network** ``F``: a diffusers ``UNet2DModel`` (unconditional; class-conditional through
  ``num_class_embeds`` = classes + 1, the extra class the null condition; vector conditions by adding a
  learned projection to the time embedding) or a ``UNet2DConditionModel`` (vector conditions as
  cross-attention tokens, optionally also added to the time embedding), built from a config (no hub access).
  Images whose side the UNet cannot halve ``levels − 1`` times (8×8 digits with 4 levels, 28×28 MNIST with 4)
  are zero-padded (after ``c_in``) and the output cropped back.

Deliberate differences from the official code:

* The network is diffusers' UNet, not the official DDPM++/NCSN++/ADM ``SongUNet``/``DhariwalUNet``: same
  family (residual blocks, self-attention at chosen resolutions, positional time embedding of ``c_noise``
  with the official ``endpoint=True`` frequencies, i.e. diffusers' ``freq_shift = 1``), different details
  (GroupNorm groups, skip scaling, no resampling filter). ``EDMBuilder.Config`` defaults follow the paper's
  CIFAR-10 DDPM++ (128 channels, multipliers (2, 2, 2), 4 blocks per level, attention at 16×16, dropout
  0.13, batch 512); :func:`build_denoiser`'s own defaults are CPU-sized (32 channels, (1, 2, 2), 1 block,
  no attention, no dropout), and the ``digits-edm`` preset is CPU-sized too.
* No non-leaking augmentation pipeline (the official CIFAR-10 runs use it with p = 0.12 and feed the
  augmentation labels to the network); no mixed precision.
* The loss is the per-pixel mean (the official code sums over pixels and averages over the batch; Adam makes
  the scale immaterial except for its ε).
* Training length is counted in optimiser steps (``steps``), not in images (``duration`` 200 Mimg).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import ConfigError, ShapeError, UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.prior import Prior, PriorBuilder
from invertkit.plugins.priors.plg_cgan import prior_labels
from invertkit.plugins.priors.wgan_gp import freeze

__all__ = [
    "SIGMA_DATA", "precondition", "loss_weight", "sample_training_sigma", "karras_sigmas", "EDMDenoiser",
    "build_denoiser", "noisy_denoise", "edm_loss", "train_denoiser", "ema_update", "edm_sample", "SampleFacts",
    "guided_denoise", "EDMPrior", "EDMBuilder", "PAPER_NETWORK",
]

SIGMA_DATA = 0.5

#: the paper's CIFAR-10 DDPM++ network (train.py --arch=ddpmpp): what EDMBuilder.Config defaults to
PAPER_NETWORK: dict[str, Any] = {"width": 128, "channel_mult": (2, 2, 2), "layers_per_block": 4,
                                 "attention": (16,), "dropout": 0.13}


# ------------------------------------------------------------------------------------------ formulas
def precondition(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(c_skip, c_out, c_in, c_noise)`` of EDM Table 1, broadcastable like ``sigma``."""
    sigma = torch.as_tensor(sigma)
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), 1.0 / total.sqrt(), sigma.log() / 4


def loss_weight(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """EDM's loss weight ``λ(σ) = (σ² + σd²) / (σ σd)²`` (= 1 / c_out²)."""
    sigma = torch.as_tensor(sigma)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def _randn(shape: Sequence[int], generator: torch.Generator | None, device: Any = None,
           dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal draws from ``generator`` (on its own device), moved to ``device``."""
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype).to(device)


def sample_training_sigma(n: int, *, p_mean: float = -1.2, p_std: float = 1.2,
                          generator: torch.Generator | None = None, device: Any = None) -> Tensor:
    """``n`` training noise levels, ``ln σ ~ N(p_mean, p_std²)`` (EDM's log-normal)."""
    return (_randn((n,), generator, device) * p_std + p_mean).exp()


def karras_sigmas(steps: int, *, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  device: Any = None) -> Tensor:
    """EDM's time steps (float64): ``steps`` values decreasing from ``sigma_max`` to ``sigma_min`` on the
    ρ-schedule, then a final 0 (``steps + 1`` values). One step is ``[sigma_max, 0]``."""
    if int(steps) < 1:
        raise ConfigError(f"EDM sampling needs at least 1 step, got {steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ConfigError(f"EDM needs 0 < sigma_min <= sigma_max, got {sigma_min} and {sigma_max}")
    if rho <= 0:
        raise ConfigError(f"EDM's schedule exponent rho must be positive, got {rho}")
    i = torch.arange(int(steps), dtype=torch.float64, device=device)
    frac = i / max(int(steps) - 1, 1)
    t = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64, device=device)])


# ------------------------------------------------------------------------------------------ network
CondKind = Literal["none", "class", "vector"]
CondMode = Literal["add", "cross-attention", "both"]


class EDMDenoiser(nn.Module):
    """``D(x; σ, cond) = c_skip x + c_out F(c_in x; c_noise, cond)``, ``F`` a diffusers UNet.

    ``x`` and the output are ``(N, C, H, W)`` in the ``[-1, 1]`` data scale (plus noise); ``sigma`` a scalar or
    ``(N,)``. ``cond``: ``None`` (unconditional), class labels in ``[0, num_classes]`` (``num_classes`` is the
    null class) or ``(N, cond_dim)`` vectors; :meth:`null_condition` gives the classifier-free-guidance null
    condition (for vectors a learned vector, initialised at zero). Build one with :func:`build_denoiser`.
    """

    def __init__(self, unet: nn.Module, image_shape: tuple[int, int, int], *, cond_kind: CondKind = "none",
                 num_classes: int = 0, cond_dim: int = 0, cond_mode: CondMode = "add", tokens: int = 0,
                 token_dim: int = 0, padded_shape: tuple[int, int] | None = None,
                 sigma_data: float = SIGMA_DATA) -> None:
        super().__init__()
        self.unet = unet
        self.image_shape = tuple(int(s) for s in image_shape)
        self.padded_shape = tuple(padded_shape or self.image_shape[1:])
        self.cond_kind, self.cond_mode = cond_kind, cond_mode
        self.num_classes, self.cond_dim = int(num_classes), int(cond_dim)
        self.sigma_data = float(sigma_data)
        self.tokens, self.token_dim = int(tokens), int(token_dim)
        if cond_kind == "vector":
            self.null_vector = nn.Parameter(torch.zeros(self.cond_dim))
            temb = unet.time_embedding.linear_2.out_features
            self.to_embedding = (nn.Sequential(nn.Linear(self.cond_dim, temb), nn.SiLU(), nn.Linear(temb, temb))
                                 if cond_mode in ("add", "both") else None)
            self.to_tokens = (nn.Linear(self.cond_dim, self.tokens * self.token_dim)
                              if cond_mode in ("cross-attention", "both") else None)

    # ---- conditions
    def null_condition(self, n: int, device: Any = None) -> Tensor | None:
        """The null condition for ``n`` rows (``None`` for an unconditional denoiser)."""
        device = device if device is not None else self.device
        if self.cond_kind == "class":
            return torch.full((n,), self.num_classes, dtype=torch.long, device=device)
        if self.cond_kind == "vector":
            return self.null_vector.to(device)[None].expand(n, -1)
        return None

    def check_condition(self, cond: Tensor | None, n: int) -> Tensor | None:
        """``cond`` validated for ``n`` rows (``None`` becomes the null condition of a conditional denoiser)."""
        if self.cond_kind == "none":
            return None
        if cond is None:
            return self.null_condition(n)
        cond = torch.as_tensor(cond).to(self.device)
        if self.cond_kind == "class":
            cond = cond.long().reshape(-1)
            if len(cond) != n:
                raise ShapeError(f"EDM denoiser: {n} images but {len(cond)} class labels")
            if len(cond) and (int(cond.min()) < 0 or int(cond.max()) > self.num_classes):
                raise UsageError(f"EDM denoiser: class labels must be in [0, {self.num_classes}] "
                                 f"({self.num_classes} is the null class), got {int(cond.min())}..{int(cond.max())}")
            return cond
        if cond.dim() != 2 or cond.shape != (n, self.cond_dim):
            raise ShapeError(f"EDM denoiser: vector conditions have shape ({n}, {self.cond_dim}), got {tuple(cond.shape)}")
        return cond.to(self.null_vector.dtype)

    def drop_condition(self, cond: Tensor | None, keep: Tensor) -> Tensor | None:
        """``cond`` with the rows where ``keep`` is False replaced by the null condition."""
        if cond is None or self.cond_kind == "none":
            return cond
        null = self.null_condition(len(cond), cond.device)
        if self.cond_kind == "class":
            return torch.where(keep, cond, null)
        return torch.where(keep[:, None], cond, null)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- D(x; σ, cond)
    def network(self, x_in: Tensor, c_noise: Tensor, cond: Tensor | None) -> Tensor:
        """``F(c_in x; c_noise, cond)`` on the unpadded image (pads, runs the UNet, crops)."""
        h, w = self.image_shape[1:]
        ph, pw = self.padded_shape
        if (ph, pw) != (h, w):
            x_in = F.pad(x_in, (0, pw - w, 0, ph - h))
        kwargs: dict[str, Any] = {}
        if self.cond_kind == "class":
            kwargs["class_labels"] = cond
        elif self.cond_kind == "vector":
            if self.to_embedding is not None:
                kwargs["class_labels"] = self.to_embedding(cond)
            if self.to_tokens is not None:
                kwargs["encoder_hidden_states"] = self.to_tokens(cond).view(len(cond), self.tokens, self.token_dim)
        out = self.unet(x_in, c_noise, **kwargs).sample
        return out[:, :, :h, :w]

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ShapeError(f"EDM denoiser takes (N, {', '.join(map(str, self.image_shape))}) images, got {tuple(x.shape)}")
        n = len(x)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        sigma = sigma.expand(n) if sigma.numel() == 1 else sigma
        if sigma.shape != (n,):
            raise ShapeError(f"EDM denoiser: sigma must be a scalar or ({n},), got {tuple(sigma.shape)}")
        c_skip, c_out, c_in, c_noise = precondition(sigma, self.sigma_data)
        b = (n, 1, 1, 1)
        f = self.network((c_in.view(b) * x).float(), c_noise.float(), self.check_condition(cond, n))
        return c_skip.view(b) * x + c_out.view(b) * f.to(x.dtype)


def _groups(width: int, wanted: int = 32) -> int:
    return math.gcd(int(width), wanted)


def build_denoiser(image_shape: Sequence[int], *, cond_kind: CondKind = "none", num_classes: int = 0,
                   cond_dim: int = 0, cond_mode: CondMode = "add", width: int = 32,
                   channel_mult: Sequence[int] = (1, 2, 2), levels: int | None = None, layers_per_block: int = 1,
                   attention: Sequence[int] = (), dropout: float = 0.0, tokens: int = 4,
                   attention_head_dim: int = 8, sigma_data: float = SIGMA_DATA) -> EDMDenoiser:
    """An :class:`EDMDenoiser` over a freshly initialised diffusers UNet (no hub access).

    ``width`` × ``channel_mult[i]`` channels at level ``i`` (``levels``, if given, means multipliers
    ``(1, 2, 2, ...)`` of that length); ``layers_per_block`` residual blocks per level; self-attention at the
    (padded) resolutions in ``attention``; ``dropout`` in the residual blocks. Conditions: ``cond_kind``
    ``"class"`` (``num_classes`` classes + the null class, an embedding added to the time embedding) or
    ``"vector"`` (``cond_dim`` floats; ``cond_mode`` "add": a projection added to the time embedding,
    "cross-attention": ``tokens`` tokens attended to by cross-attention blocks at every level, "both").
    Defaults are CPU-sized; :data:`PAPER_NETWORK` holds the paper's CIFAR-10 DDPM++ sizes.
    """
    from diffusers import UNet2DConditionModel, UNet2DModel

    c, h, w = (int(s) for s in image_shape)
    if cond_kind not in ("none", "class", "vector"):
        raise ConfigError(f"EDM denoiser: cond_kind must be 'none', 'class' or 'vector', got '{cond_kind}'")
    if cond_mode not in ("add", "cross-attention", "both"):
        raise ConfigError(f"EDM denoiser: cond_mode must be 'add', 'cross-attention' or 'both', got '{cond_mode}'")
    if cond_kind == "class" and num_classes < 1:
        raise ConfigError("EDM denoiser: a class-conditional denoiser needs num_classes >= 1")
    if cond_kind == "vector" and cond_dim < 1:
        raise ConfigError("EDM denoiser: a vector-conditional denoiser needs cond_dim >= 1")
    mult = tuple((1,) + (2,) * (int(levels) - 1)) if levels is not None else tuple(int(m) for m in channel_mult)
    if not mult or min(mult) < 1 or width < 1:
        raise ConfigError(f"EDM denoiser: needs width >= 1 and at least one positive channel multiplier, got {width}, {mult}")
    channels = tuple(int(width) * m for m in mult)
    step = 2 ** (len(mult) - 1)
    ph, pw = step * math.ceil(h / step), step * math.ceil(w / step)
    resolutions = [ph // 2**i for i in range(len(mult))]
    attn = [r in set(int(a) for a in attention) for r in resolutions]
    cross = cond_kind == "vector" and cond_mode in ("cross-attention", "both")
    common = dict(sample_size=(ph, pw), in_channels=c, out_channels=c, block_out_channels=channels,
                  layers_per_block=int(layers_per_block), dropout=float(dropout), flip_sin_to_cos=True, freq_shift=1,
                  norm_num_groups=_groups(min(channels)), attention_head_dim=int(attention_head_dim))
    token_dim = channels[0] if cross else 0
    if cross:
        unet = UNet2DConditionModel(
            down_block_types=tuple("CrossAttnDownBlock2D" for _ in mult),
            up_block_types=tuple("CrossAttnUpBlock2D" for _ in mult),
            mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=token_dim,
            class_embed_type="identity" if cond_mode == "both" else None, **common)
    else:
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn))
        extra: dict[str, Any] = {}
        if cond_kind == "class":
            extra["num_class_embeds"] = int(num_classes) + 1
        elif cond_kind == "vector":
            extra["class_embed_type"] = "identity"
        unet = UNet2DModel(down_block_types=down, up_block_types=up, add_attention=bool(attention),
                           time_embedding_type="positional", **extra, **common)
    return EDMDenoiser(unet, (c, h, w), cond_kind=cond_kind, num_classes=num_classes, cond_dim=cond_dim,
                       cond_mode=cond_mode, tokens=int(tokens) if cross else 0, token_dim=token_dim,
                       padded_shape=(ph, pw), sigma_data=sigma_data)


# ------------------------------------------------------------------------------------------ training
def noisy_denoise(denoiser: EDMDenoiser, x0: Tensor, cond: Tensor | None = None, *,
                  generator: torch.Generator | None = None, p_mean: float = -1.2, p_std: float = 1.2,
                  cond_drop: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """``(D(x0 + σε; σ, cond), σ, λ(σ))`` for clean ``x0`` in ``[-1, 1]``, ``σ`` drawn log-normally per row.
    The condition is replaced by the null condition with probability ``cond_drop`` per row."""
    n = len(x0)
    sigma = sample_training_sigma(n, p_mean=p_mean, p_std=p_std, generator=generator, device=x0.device)
    noise = _randn(x0.shape, generator, x0.device, x0.dtype)
    if denoiser.cond_kind != "none":
        cond = denoiser.check_condition(cond, n)
        if cond_drop > 0:
            keep = torch.rand(n, generator=generator, device=generator.device if generator else None).to(x0.device) >= cond_drop
            cond = denoiser.drop_condition(cond, keep)
    x = x0 + sigma.view(n, 1, 1, 1).to(x0.dtype) * noise
    return denoiser(x, sigma, cond), sigma, loss_weight(sigma, denoiser.sigma_data)


def edm_loss(denoiser: EDMDenoiser, x0: Tensor, cond: Tensor | None = None, **kw: Any) -> Tensor:
    """EDM's training loss: the mean over rows and pixels of ``λ(σ) (D(x0 + σε; σ) − x0)²`` (keywords go to
    :func:`noisy_denoise`)."""
    denoised, _, weight = noisy_denoise(denoiser, x0, cond, **kw)
    return (weight.view(-1, 1, 1, 1) * (denoised - x0) ** 2).mean()


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, *, batch_size: int, images_seen: int, halflife_images: float,
               rampup_ratio: float | None = 0.05) -> float:
    """The official EMA step: half-life ``halflife_images`` (capped at ``rampup_ratio`` × ``images_seen``),
    ``β = 0.5 ** (batch_size / half-life)``, ``ema ← net + β (ema − net)``. Returns β."""
    half = float(halflife_images)
    if rampup_ratio is not None:
        half = min(half, images_seen * float(rampup_ratio))
    beta = 0.5 ** (batch_size / max(half, 1e-8))
    for p_ema, p_net in zip(ema.parameters(), net.parameters()):
        p_ema.copy_(p_net.detach().lerp(p_ema, beta))
    for b_ema, b_net in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b_net)
    return beta


def train_denoiser(denoiser: EDMDenoiser, images01: Tensor, cond: Tensor | None = None, *, steps: int,
                   batch_size: int, lr: float, ema_halflife_images: float, cond_drop: float = 0.0, seed: int = 0,
                   extra_loss: Callable[[Tensor, Tensor, Tensor | None, Tensor], Tensor] | None = None,
                   params: Iterable[nn.Parameter] | None = None, progress: Callable[..., Any] | None = None,
                   lr_rampup_images: float = 10_000_000, ema_rampup_ratio: float | None = 0.05,
                   p_mean: float = -1.2, p_std: float = 1.2, betas: tuple[float, float] = (0.9, 0.999),
                   eps: float = 1e-8) -> tuple[EDMDenoiser, dict[str, Any]]:
    """Train ``denoiser`` in place on ``images01`` (``[0, 1]``; scaled to ``[-1, 1]`` here) with EDM's loss.

    Adam(``lr``, ``betas``, ``eps``); the learning rate ramps up linearly over ``lr_rampup_images`` images
    (official: 10 M; pass 0 for none — short runs want a short ramp); non-finite gradients become 0.
    ``cond``: one condition per image (labels or vectors), dropped with probability ``cond_drop``.
    ``extra_loss(denoised, x0, cond, sigma)`` is added to the EDM loss (``x0`` in ``[-1, 1]``); ``params``
    restricts what trains (default: every parameter). Returns ``(ema, facts)``: a frozen, eval-mode EMA copy
    of the denoiser (the network EDM samples with) and ``{"seconds", "steps", "images", "loss"}``.
    ``progress(step, steps, loss)`` is called every 50 steps.
    """
    if images01.dim() != 4 or tuple(images01.shape[1:]) != denoiser.image_shape:
        raise ShapeError(f"EDM training images must be (N, {', '.join(map(str, denoiser.image_shape))}), "
                         f"got {tuple(images01.shape)}")
    if cond is not None and len(cond) != len(images01):
        raise ShapeError(f"EDM training: {len(images01)} images but {len(cond)} conditions")
    if int(steps) < 1 or int(batch_size) < 1:
        raise ConfigError(f"EDM training needs steps >= 1 and batch_size >= 1, got {steps} and {batch_size}")
    if not 0.0 <= cond_drop < 1.0:
        raise ConfigError(f"EDM training: cond_drop must be in [0, 1), got {cond_drop}")
    device = denoiser.device
    g = torch.Generator().manual_seed(int(seed))
    x_all = images01.to(device) * 2 - 1
    c_all = cond.to(device) if cond is not None else None
    trainable = list(params) if params is not None else [p for p in denoiser.parameters()]
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.Adam(trainable, lr=lr, betas=betas, eps=eps)
    denoiser.train()
    ema = copy.deepcopy(denoiser).eval().requires_grad_(False)
    n, bs, seen = len(x_all), int(batch_size), 0
    t0, last = time.perf_counter(), float("nan")
    for step in range(int(steps)):
        idx = torch.randint(0, n, (bs,), generator=g).to(device)
        x0 = x_all[idx]
        c = c_all[idx] if c_all is not None else None
        denoised, sigma, weight = noisy_denoise(denoiser, x0, c, generator=g, p_mean=p_mean, p_std=p_std,
                                                cond_drop=cond_drop)
        loss = (weight.view(-1, 1, 1, 1) * (denoised - x0) ** 2).mean()
        if extra_loss is not None:
            loss = loss + extra_loss(denoised, x0, c, sigma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = lr * min(seen / max(float(lr_rampup_images), 1e-8), 1.0)
        for p in trainable:
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        opt.step()
        ema_update(ema, denoiser, batch_size=bs, images_seen=seen, halflife_images=ema_halflife_images,
                   rampup_ratio=ema_rampup_ratio)
        seen += bs
        last = float(loss.detach())
        if progress is not None and (step + 1) % 50 == 0:
            progress(step + 1, int(steps), last)
    denoiser.eval()
    freeze(ema)
    return ema, {"seconds": time.perf_counter() - t0, "steps": int(steps), "images": seen, "loss": last}


# ------------------------------------------------------------------------------------------ sampling
@dataclass
class SampleFacts:
    """What one :func:`edm_sample` call did: ``evaluations`` of the (guided) denoiser ``D`` (2N − 1 Heun, N
    Euler) and ``network_calls`` of the UNet (one per evaluation; a guided evaluation runs the conditional
    and the null condition in one batch of twice the rows)."""

    evaluations: int = 0
    network_calls: int = 0


def guided_denoise(denoiser: EDMDenoiser, x: Tensor, sigma: Tensor, cond: Tensor | None,
                   guidance: float = 1.0) -> Tensor:
    """Classifier-free guidance ``D_null + w (D_cond − D_null)``; ``w = 1`` (or an unconditional denoiser) is
    ``D_cond`` alone, one plain evaluation."""
    if guidance == 1.0 or denoiser.cond_kind == "none":
        return denoiser(x, sigma, cond)
    n = len(x)
    cond = denoiser.check_condition(cond, n)
    sigma = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(n)
    both = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]),
                    torch.cat([cond, denoiser.null_condition(n, cond.device)]))
    d_cond, d_null = both[:n], both[n:]
    return d_null + guidance * (d_cond - d_null)


def edm_sample(denoiser: EDMDenoiser, noise: Tensor, cond: Tensor | None = None, *, steps: int = 18,
               solver: Literal["heun", "euler"] = "heun", sigma_min: float = 0.002, sigma_max: float = 80.0,
               rho: float = 7.0, s_churn: float = 0.0, s_min: float = 0.0, s_max: float = float("inf"),
               s_noise: float = 1.0, guidance: float = 1.0, generator: torch.Generator | None = None,
               x0_hook: Callable[[Tensor, Tensor, int], Tensor] | None = None, differentiable: bool = False,
               facts: SampleFacts | None = None) -> Tensor:
    """Images in ``[0, 1]`` from unit Gaussian ``noise`` ``(N, C, H, W)`` (scaled by ``sigma_max`` here): EDM's
    Algorithm 2 (``generate.py``'s ``edm_sampler``). ``solver`` "heun" (2nd order, Euler into σ = 0: 2N − 1
    evaluations) or "euler" (N). Churn ``s_churn`` > 0 adds fresh noise (from ``generator``) at the steps
    with ``s_min <= σ <= s_max``; with ``s_churn = 0`` sampling is a deterministic function of ``noise``.
    ``guidance`` is the classifier-free guidance weight ``w`` (1: none). ``x0_hook(denoised, sigma, step)``
    may replace every denoiser output (``denoised`` in ``[-1, 1]``; gradient guidance). ``differentiable``
    keeps the autograd graph (back to ``noise``, ``cond`` and the network). The state is float64 as in the
    official sampler. ``facts`` (a :class:`SampleFacts`), when given, receives the evaluation count; the
    count of the last call is also at ``edm_sample.last_facts``."""
    if solver not in ("heun", "euler"):
        raise ConfigError(f"EDM sampler: solver must be 'heun' or 'euler', got '{solver}'")
    if noise.dim() != 4 or tuple(noise.shape[1:]) != denoiser.image_shape:
        raise ShapeError(f"EDM sampler: noise must be (N, {', '.join(map(str, denoiser.image_shape))}), got {tuple(noise.shape)}")
    facts = facts if facts is not None else SampleFacts()
    facts.evaluations = facts.network_calls = 0
    t_steps = karras_sigmas(steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, device=noise.device)
    if denoiser.cond_kind != "none":
        cond = denoiser.check_condition(cond, len(noise))

    def evaluate(x: Tensor, sigma: Tensor, i: int) -> Tensor:
        d = guided_denoise(denoiser, x.to(noise.dtype), sigma.to(noise.dtype), cond, guidance).to(torch.float64)
        facts.evaluations += 1
        facts.network_calls += 1
        return x0_hook(d, sigma, i).to(torch.float64) if x0_hook is not None else d

    with torch.set_grad_enabled(bool(differentiable)):
        x_next = noise.to(torch.float64) * t_steps[0]
        for i in range(int(steps)):
            t_cur, t_next = t_steps[i], t_steps[i + 1]
            x_cur = x_next
            gamma = min(s_churn / steps, math.sqrt(2) - 1) if s_churn > 0 and s_min <= float(t_cur) <= s_max else 0.0
            t_hat = t_cur + gamma * t_cur
            x_hat = x_cur
            if gamma > 0:
                x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * s_noise * _randn(x_cur.shape, generator, x_cur.device,
                                                                                 torch.float64)
            d_cur = (x_hat - evaluate(x_hat, t_hat, i)) / t_hat
            x_next = x_hat + (t_next - t_hat) * d_cur
            if solver == "heun" and i < int(steps) - 1:
                d_prime = (x_next - evaluate(x_next, t_next, i)) / t_next
                x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        out = ((x_next + 1) / 2).clamp(0, 1).to(noise.dtype)
    edm_sample.last_facts = facts  # type: ignore[attr-defined]
    return out


# ------------------------------------------------------------------------------------------ prior
class EDMPrior(Prior):
    """An EDM denoiser as a prior: the latent is the initial unit Gaussian noise (``latent_shape`` =
    ``image_shape``) and ``decode(z, labels)`` the deterministic sampler from it (Heun, 18 steps by default),
    differentiable in ``z`` when gradients are enabled. Conditional when the denoiser is class-conditional
    (labels: target classes; ``None`` decodes latent ``i`` as class ``i mod K``); an unconditional one ignores
    labels. ``sampler`` holds the keywords of :func:`edm_sample` (steps, solver, churn, guidance, ...)."""

    name = "edm"

    def __init__(self, denoiser: EDMDenoiser, **sampler: Any) -> None:
        freeze(denoiser)
        self.denoiser = denoiser
        self.image_shape = denoiser.image_shape  # type: ignore[assignment]
        self.latent_shape = tuple(denoiser.image_shape)
        self.conditional = denoiser.cond_kind == "class"  # type: ignore[misc]
        self.num_classes = denoiser.num_classes
        self.sampler = dict(sampler)

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    def _labels(self, n: int, labels: Tensor | None) -> Tensor | None:
        return prior_labels(self, n, labels) if self.conditional else None

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if z.dim() != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ShapeError(f"prior '{self.name}' decodes noise of shape (N, {', '.join(map(str, self.latent_shape))}), "
                             f"got {tuple(z.shape)}")
        return edm_sample(self.denoiser, z, self._labels(len(z), labels),
                          differentiable=torch.is_grad_enabled(), **self.sampler)


class EDMBuilder(PriorBuilder):
    name = "edm"
    summary = "EDM diffusion prior (Karras et al. 2022): preconditioned diffusers UNet, log-normal σ, Heun sampler from noise."
    paper = "https://arxiv.org/abs/2206.00364"

    class Config(ComponentConfig):
        width: int = Field(128, ge=1, description="UNet base channels (paper's DDPM++ CIFAR-10: 128)")
        channel_mult: list[int] = Field([2, 2, 2], min_length=1, description="channel multiplier per level (paper: 2, 2, 2)")
        layers_per_block: int = Field(4, ge=1, description="residual blocks per level (paper: 4)")
        attention: list[int] = Field([16], description="resolutions with self-attention (paper: 16)")
        dropout: float = Field(0.13, ge=0, lt=1, description="dropout in the residual blocks (paper, CIFAR-10: 0.13)")
        steps: int = Field(390_625, ge=1, description="optimiser steps (paper, CIFAR-10: 200 Mimg at batch 512 = 390,625 steps)")
        batch_size: int = Field(512, ge=1, description="batch size (paper: 512)")
        lr: float = Field(1e-3, gt=0, description="Adam learning rate (paper, CIFAR-10: 1e-3)")
        lr_rampup_images: float = Field(10_000_000, ge=0, description="images over which the lr ramps up linearly (official: 10 M)")
        ema_halflife_images: float = Field(500_000, ge=0, description="EMA half-life in images (official: 500 k)")
        ema_rampup_ratio: float | None = Field(0.05, ge=0, description="EMA half-life cap as a fraction of the images seen (official: 0.05; null: none)")
        p_mean: float = Field(-1.2, description="mean of ln σ in training (paper: -1.2)")
        p_std: float = Field(1.2, gt=0, description="std of ln σ in training (paper: 1.2)")
        sample_steps: int = Field(18, ge=1, description="sampler steps N of decode (paper, CIFAR-10: 18, 35 evaluations)")
        solver: Literal["heun", "euler"] = Field("heun", description="decode's ODE solver (paper: heun)")
        sigma_min: float = Field(0.002, gt=0, description="smallest noise level of the schedule (paper: 0.002)")
        sigma_max: float = Field(80.0, gt=0, description="largest noise level of the schedule (paper: 80)")
        rho: float = Field(7.0, gt=0, description="schedule exponent ρ (paper: 7)")
        s_churn: float = Field(0.0, ge=0, description="stochastic churn S_churn (0: deterministic decode)")
        s_min: float = Field(0.0, ge=0, description="S_min: churn only at σ >= S_min")
        s_max: float = Field(float("inf"), ge=0, description="S_max: churn only at σ <= S_max")
        s_noise: float = Field(1.0, ge=0, description="S_noise: scale of the churn noise")

    def networks(self, image_shape: tuple[int, int, int]) -> dict[str, nn.Module]:
        cfg = self.config
        return {"denoiser": build_denoiser(image_shape, width=cfg.width, channel_mult=cfg.channel_mult,
                                           layers_per_block=cfg.layers_per_block, attention=cfg.attention,
                                           dropout=cfg.dropout)}

    def train(self, nets: dict[str, nn.Module], public_images: Tensor, *, seed: int, progress=None,  # noqa: ANN001
              target=None) -> dict:  # noqa: ANN001 - unused: EDM learns from the public images only
        cfg = self.config
        net = nets["denoiser"]
        ema, facts = train_denoiser(net, public_images, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                    ema_halflife_images=cfg.ema_halflife_images, seed=seed, progress=progress,
                                    lr_rampup_images=cfg.lr_rampup_images, ema_rampup_ratio=cfg.ema_rampup_ratio,
                                    p_mean=cfg.p_mean, p_std=cfg.p_std)
        net.load_state_dict(ema.state_dict())  # the cached network is the EMA, as the official code samples with
        net.eval()
        return facts

    def sampler(self) -> dict[str, Any]:
        """The :func:`edm_sample` keywords of the wrapped prior's ``decode``."""
        cfg = self.config
        return {"steps": cfg.sample_steps, "solver": cfg.solver, "sigma_min": cfg.sigma_min,
                "sigma_max": cfg.sigma_max, "rho": cfg.rho, "s_churn": cfg.s_churn, "s_min": cfg.s_min,
                "s_max": cfg.s_max, "s_noise": cfg.s_noise}

    def wrap(self, nets: dict[str, nn.Module]) -> Prior:
        return EDMPrior(nets["denoiser"], **self.sampler())  # type: ignore[arg-type]


@hookimpl
def invertkit_register_priors(register) -> None:  # noqa: ANN001
    register(EDMBuilder)
