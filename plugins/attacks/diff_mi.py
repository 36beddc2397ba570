"""Diff-MI: model inversion through a target-specific conditional diffusion model (Li et al., 2024).

Ouxiang Li, Yanbin Hao, Zhicai Wang, Bin Zhu, Shuo Wang, Zaixi Zhang, Fuli Feng, "Model Inversion Attacks Through
Target-Specific Conditional Diffusion Models", https://arxiv.org/abs/2407.11424. Official code (Apache-2.0):
https://github.com/Ouxiang-Li/Diff-MI (stored commit 4778b9e); this module follows ``top_n_selection.py``,
``1_pretrain/free_train.py`` (+ ``guided_diffusion/train_util.py``), ``2_finetune/fintune_train.py`` (+ its
``train_util.py: run_cls_only``) and ``3_attack/attack.py`` with the README's commands. The code is our own.

White-box (the official attack backpropagates through the target's logits and penultimate features):

1. **Top-n pseudo-labelling** (PLG-MI's, :func:`~invertkit.plugins.priors.plg_cgan.pseudo_label`): the target
   scores every public image; for each target class the ``top_n`` most confident ones (README data dir
   ``VGG16_top30``: 30) are labelled with it. ``p_reg`` is class-wise: the mean of the target's penultimate
   features over each class's pseudo-labelled images (the official ships it precomputed as ``p_reg[class]``
   without the script; this is how it is indexed and what "class-wise" reads as).
2. **Pre-training** a class-conditional diffusion model on them with a null class for classifier-free guidance
   (``free_train.py``: the label replaced by the null class with probability 0.1, random horizontal flips,
   batch 150 (README), AdamW lr 1e-4 without weight decay, 50,000 iterations, EMA 0.9999).
3. **Fine-tuning to the target** (``run_cls_only``): only the class embedding and the middle block's two residual
   blocks' convolutions and its attention's output projection train (AdamW lr 2e-4). Per batch of 4 classes,
   a 10-step DPM-Solver++(2M) sample with guidance 3 from fresh noise keeps its graph; the predicted ``x0`` of its
   steps 3..9 and the final sample, each in 2 augmented copies (PLG-MI's kornia pipeline with the colour jitter
   at p 0.5), go to the target, and the loss is the top-k margin loss (k 20) plus the p_reg loss. Epochs over
   the classes run until the mean accuracy of an epoch reaches 0.99 or 100 epochs.
4. **Iterative reconstruction** (``attack.py: Iterative_Image_Reconstruction``): an image ``x`` (initially
   Gaussian noise) is optimised by Adamax (lr 1) for 30 steps, each two updates: the diffusion loss
   ``||eps_w(x_t, t, y) - eps||^2`` at a noise level ``t`` that falls from 1000 to 200 (a linear-plus-cosine
   schedule with a uniform jitter of +-50), ``eps_w`` the guided prediction (w 3); then the top-k margin loss
   (k 20) plus ``alpha`` (1) times the p_reg loss on 4 augmented copies (horizontal flip, brightness jitter 0.2 at
   p 0.5, a 7x7 Gaussian blur of sigma 3 at p 0.5), its gradient clipped to 1.25 times a running mean of the
   diffusion loss's gradient norm. ``x`` is then re-noised to ``t = 100`` and sampled back by guided DDIM
   (eta 1, the 100-step grid).
5. **A final targeted L2 step** (the official ``robustness`` PGD): 10 steps of 0.1 inside an L2 ball of 0.5
   around the reconstruction, random start, cross-entropy towards the identity, the best kept.

Identities x samples are batched together (``batch_size``, official 64).

**Honest bench.** Pseudo-labels, ``p_reg`` and every fine-tuning signal come from the attacker's view of the
target as defended and are counted; the pre-trained and the fine-tuned diffusion models are cached through
``self.context.cache`` (two entries, each charging again the queries it cost when it is re-used). The
pseudo-labelling and ``p_reg`` (one query per public image, one per selected image) are re-done, and paid for, on
every run. ``needs_prior = False``: Diff-MI's prior is its own target-specific diffusion model; the bench's prior
is ignored.

**DDPM timesteps as EDM noise levels.** invertkit's diffusion machinery is EDM (Karras et al. 2022,
:mod:`invertkit.plugins.priors.edm`): a denoiser ``D(x; sigma, y)`` on ``x = x0 + sigma * eps``. The official
model is a DDPM (``eps``-prediction, linear betas 1e-4..0.02 over T = 1000). A DDPM state at step ``t`` is
``sqrt(abar_t) (x0 + sigma_t eps)`` with **``sigma_t = sqrt((1 - abar_t) / abar_t)``** (:func:`ddpm_sigma`;
``abar_t`` the official ``alphabar[t - 1]``: t = 1 gives sigma 0.01, t = 100 0.339, t = 200 0.719, t = 1000 157), so every
official formula maps exactly: ``eps = (x - D) / sigma``; the guided ``eps_w = w eps_y - (w - 1) eps_null`` is
``D_w = D_null + w (D_y - D_null)``; the diffusion loss is ``||(x_t - D_w(x_t)) / sigma - eps||^2``; DDIM with
eta 1 is the ancestral step ``x' = D + sqrt(s'^2 - u^2) eps_hat + u z``, ``u = s' sqrt(1 - s'^2 / s^2)``
(:func:`ancestral_sample`); DPM-Solver++(2M) is ``x' = (s'/s) x - expm1(-h) (D + (D - D_prev) / (2 r))`` with
``h = log(s / s')`` (:func:`dpm_solver_pp_2m`), on the official time-uniform grid of DPM-Solver's discrete VP
schedule (:func:`vp_sigma`: ``log alpha`` interpolated linearly between the steps ``k / 1000``).

Deliberate differences:

* **The network** is invertkit's EDM denoiser (a diffusers UNet with EDM's preconditioning), trained with EDM's
  loss (log-normal sigma; Adam at a constant learning rate, no ramp-up, as the official AdamW without weight
  decay; the EMA as a half-life in images: 0.9999 per step of 150 images is a half-life of 1.04 M images, EDM's
  EMA ramp-up off unless ``ema_rampup_ratio`` is set), not a guided-diffusion UNet trained on ``eps`` at uniform
  timesteps. Its width, depth and attention are options (official: 128 channels, multipliers 1, 2, 3, 4, 3
  blocks, attention at 16 and 8 px with 4 heads; here the EDM module's attention head size).
  The null class replaces the label per image with probability 0.1 (the official code: the whole batch).
  The fine-tuned layers are the same roles in the diffusers UNet: the class embedding, ``mid_block.resnets.*``'s
  ``conv1``/``conv2`` and ``mid_block.attentions.*.to_out``.
* **Levels.** The timestep sent to the network becomes the noise level of its input. The final DDIM sampling
  starts from the level ``x`` was re-noised to (``t = 100``), where the official code's first update assumes
  ``alphas_cumprod[91]`` (its grid ``range(0, 1000, 10) + 1``, off by nine); the rest of the grid is the
  official one. The reconstruction's ``t`` is drawn from the run's generator (official: numpy's global state).
  No level is clipped: t = 1000 is sigma 157, beyond EDM's usual sigma_max of 80 and its training distribution
  (log-normal, mean ln sigma -1.2, std 1.2), and the denoiser is evaluated there as the mapping asks.
* **Augmentations** act on ``[0, 1]`` images (the official applies kornia to ``[-1, 1]`` tensors and clamps to
  ``[-1, 1]``); the fine-tuning pipeline is :func:`~invertkit.core.augment.plg_augment` with ``jitter_p`` 0.5.
* **Classes.** The official fine-tunes on the 300 classes it attacks (hard-coded); here on all the target's
  classes. ``k`` is capped at ``K - 1`` (the official ``topk`` fails for ``k >= K``). The fine-tuning's
  accuracy is measured on the final sample's augmented copies (the official slice reads the last ``2 B`` rows).
* **Flips** in pre-training (official: on) are the data set doubled by its mirror images (``flip``; off for
  digits); the official dequantisation noise is undone by its own uint8 round trip and is left out.
* **Scores**: minus the final PGD cross-entropy of each image.

Cost at the defaults: pre-training 50,000 x 150 images through a 64 px UNet (GPU-days); fine-tuning up to
100 epochs x K / 4 batches of 2 x 10 guided UNet passes kept for backpropagation; the attack 30 x 3 UNet passes
and 30 x 2 x 4 target passes per image. Scale ``pretrain_steps``, the UNet, ``finetune_epochs`` and ``steps``
down for CPUs (the tests do).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core import losses, progress
from invertkit.core.augment import plg_augment
from invertkit.core.errors import ConfigError, UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack, AttackConfig, derive
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult, empty_result

__all__ = ["DiffMI", "ancestral_sample", "class_feature_means", "ddpm_alphas_cumprod", "ddpm_sigma",
           "dpm_solver_pp_2m", "dpm_solver_sigmas", "finetune", "finetune_parameters", "guided", "p_reg_loss",
           "pgd_l2_targeted", "reconstruct", "reconstruction_augment", "reconstruction_levels", "reconstruction_t",
           "topk_margin_loss", "vp_sigma"]

#: the official noise schedule (guided-diffusion ``linear``; ``3_attack/utils/diffusion.py``; DPM-Solver's betas)
DDPM_STEPS, BETA_START, BETA_END = 1000, 1e-4, 2e-2


# ------------------------------------------------------------------------------ DDPM timesteps -> EDM sigma
def ddpm_alphas_cumprod(steps: int = DDPM_STEPS, beta_start: float = BETA_START, beta_end: float = BETA_END) -> Tensor:
    """``abar`` of the linear beta schedule, float64, ``abar[i]`` for the official ``alphabar[i]`` (step ``i + 1``)."""
    betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, 0)


def ddpm_sigma(t: Tensor | int, **schedule: Any) -> Tensor:
    """The EDM noise level of DDPM step ``t`` (1..T): ``sqrt((1 - abar_t) / abar_t)`` with ``abar_t`` the official
    ``alphabar[t - 1]`` (``GaussianDiffusion.sample``). float64."""
    abar = ddpm_alphas_cumprod(**schedule)
    t = torch.as_tensor(t, dtype=torch.long)
    if bool((t < 1).any()) or bool((t > len(abar)).any()):
        raise ConfigError(f"DDPM timesteps run from 1 to {len(abar)}, got {t.tolist()}")
    a = abar[t - 1]
    return torch.sqrt((1.0 - a) / a)


def vp_sigma(t: Tensor | float, **schedule: Any) -> Tensor:
    """The EDM noise level of continuous time ``t`` in ``(0, 1]`` of DPM-Solver's discrete ``NoiseScheduleVP``:
    ``log alpha(t)`` linear between the points ``(k / T, 0.5 log abar_k)``, ``sigma = sqrt(alpha^-2 - 1)``. At
    ``t = k / T`` it is :func:`ddpm_sigma` of ``k``. float64."""
    abar = ddpm_alphas_cumprod(**schedule)
    n = len(abar)
    t = torch.as_tensor(t, dtype=torch.float64)
    pos = (t * n - 1).clamp(0, n - 1)  # index into abar, fractional
    lo = pos.floor().long().clamp(max=n - 2)
    frac = pos - lo
    log_a = 0.5 * torch.log(abar)
    la = log_a[lo] + frac * (log_a[lo + 1] - log_a[lo])
    return torch.sqrt(torch.expm1(-2.0 * la))


def dpm_solver_sigmas(steps: int, **schedule: Any) -> Tensor:
    """The fine-tuning sampler's levels: DPM-Solver's ``time_uniform`` grid from ``t = 1`` to ``t = 1 / T`` (``steps +
    1`` levels), as EDM sigmas."""
    n = len(ddpm_alphas_cumprod(**schedule))
    return vp_sigma(torch.linspace(1.0, 1.0 / n, steps + 1, dtype=torch.float64), **schedule)


def reconstruction_t(i: int, steps: int, jitter: int, *, t_max: int = 800, t_min: int = 200,
                     total: int = DDPM_STEPS) -> int:
    """The official reconstruction's timestep at step ``i`` of ``steps``: ``((S - i) / 1.5 + (S - i) / 3 cos(3 i /
    (10 pi))) / S * 800 + 200``, truncated, plus ``jitter`` (drawn uniform in [-50, 50]), clipped to [1, T]."""
    s = steps - i
    t = (s / 1.5 + s / 3 * math.cos(3 / (10 * math.pi) * i)) / steps * t_max + t_min
    return int(min(max(int(t + jitter), 1), total))  # numpy's astype(int) on the sum truncates


def reconstruction_levels(start_t: int, ddim_steps: int = 100, **schedule: Any) -> Tensor:
    """The final sampling's levels: ``sigma(start_t)`` (the re-noised level), then the official DDIM grid below it
    (``alphas_cumprod[c j + 1]`` for ``j`` = ``start_t // c - 1`` .. 1, ``c = T / ddim_steps``), then
    ``alphas_cumprod[0]``; float64, decreasing."""
    abar = ddpm_alphas_cumprod(**schedule)
    n = len(abar)
    if not 1 <= start_t < n:
        raise ConfigError(f"renoise_t must lie in [1, {n - 1}], got {start_t}")
    c = n // ddim_steps
    if c < 1:
        raise ConfigError(f"ddim_steps must be at most {n}, got {ddim_steps}")
    below = [abar[c * (j - 1) + 1] for j in range(start_t // c - 1, 0, -1)] + [abar[0]]
    levels = [ddpm_sigma(start_t, **schedule)] + [torch.sqrt((1 - a) / a) for a in below]
    out = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in levels])
    keep = torch.cat([torch.tensor([True]), out[1:] < out[0]])  # a grid point at or above the start is skipped
    return out[keep]


# ------------------------------------------------------------------------------------------------ losses
def topk_margin_loss(logits: Tensor, labels: Tensor, k: int) -> Tensor:
    """Diff-MI's top-k margin loss per sample: ``-logit_y + mean(top-k logits of the other classes)`` (official
    ``topk_loss``; its mean over the batch is the official value). ``k = 0``: ``-logit_y``; ``k`` is capped at
    ``K - 1``."""
    if logits.dim() != 2 or labels.shape != (logits.shape[0],):
        raise UsageError(f"topk_margin_loss needs (N, K) logits and (N,) labels, got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    own = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    k = min(int(k), logits.shape[1] - 1)
    if k <= 0:
        return -own
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return others.topk(k, dim=1).values.mean(1) - own


def p_reg_loss(features: Tensor, labels: Tensor, p_reg: Tensor) -> Tensor:
    """Diff-MI's class-wise p_reg loss per sample: ``mean_d (phi(x) - p_reg[y])_d^2`` (official ``p_reg_loss``:
    ``F.mse_loss(features, p_reg[classes])``, the batch mean of these)."""
    return losses.feature_regulariser(features.flatten(1), p_reg[labels.to(p_reg.device)].to(features.device))


@torch.no_grad()
def class_feature_means(target: Any, images: Tensor, labels: Tensor, num_classes: int,
                        batch_size: int = 256) -> Tensor:
    """``p_reg``: the mean of the target's penultimate features over each class's pseudo-labelled images (one
    ``features`` query per image), ``(K, D)`` on the CPU."""
    feats = torch.cat([target.features(images[i : i + batch_size].to(target.device)).flatten(1).float().cpu()
                       for i in range(0, len(images), batch_size)])
    sums = torch.zeros(num_classes, feats.shape[1]).index_add_(0, labels.cpu(), feats)
    counts = torch.bincount(labels.cpu(), minlength=num_classes).clamp_min(1).to(feats.dtype)
    return sums / counts[:, None]


# ------------------------------------------------------------------------------------ samplers (sigma space)
Denoise = Callable[[Tensor, Tensor], Tensor]  # (x, sigma (N,)) -> guided D(x; sigma), in [-1, 1]


def guided(denoiser: nn.Module, cond: Tensor, w: float) -> Denoise:
    """``(x, sigma) -> D_null + w (D_y - D_null)`` (:func:`~invertkit.plugins.priors.edm.guided_denoise`; the
    official ``w eps_y - (w - 1) eps_null``, the same linear combination)."""
    from invertkit.plugins.priors.edm import guided_denoise

    return lambda x, sigma: guided_denoise(denoiser, x, sigma, cond, w)


def _levels(sigma: Tensor, n: int, like: Tensor) -> Tensor:
    """One level for the whole batch, as a 0-d tensor on ``like``'s device (every sampler here steps the batch
    together)."""
    return sigma.to(device=like.device, dtype=like.dtype).reshape(())


def dpm_solver_pp_2m(denoise: Denoise, x: Tensor, sigmas: Tensor, *, collect_from: int = 3) -> list[Tensor]:
    """Multistep DPM-Solver++(2M) over ``sigmas`` (decreasing, ``steps + 1`` levels) from ``x`` at ``sigmas[0]``,
    keeping the graph; returns the official ``return_pred_x0`` list: the data predictions made after steps
    ``collect_from`` .. ``steps - 1`` and the final sample (first step first order, the rest second order)."""
    steps = len(sigmas) - 1
    if steps < 2:
        raise ConfigError(f"the fine-tuning sampler needs at least 2 steps, got {steps}")
    n = len(x)
    s = [float(v) for v in sigmas]
    d_prev = denoise(x, _levels(sigmas[0], n, x))
    h = math.log(s[0] / s[1])
    x = (s[1] / s[0]) * x - math.expm1(-h) * d_prev
    d_cur = denoise(x, _levels(sigmas[1], n, x))
    out: list[Tensor] = []
    for step in range(2, steps + 1):
        h_prev, h = h, math.log(s[step - 1] / s[step])
        r = h_prev / h
        x = (s[step] / s[step - 1]) * x - math.expm1(-h) * (d_cur + (d_cur - d_prev) / (2 * r))
        if step < steps:
            d_prev, d_cur = d_cur, denoise(x, _levels(sigmas[step], n, x))
            if step >= collect_from:
                out.append(d_cur)
    out.append(x)
    return out


def ancestral_sample(denoise: Denoise, x: Tensor, sigmas: Tensor, generator: torch.Generator) -> Tensor:
    """DDIM with eta 1 in sigma space (ancestral): from ``sigmas[i]`` to ``sigmas[i + 1]`` the step
    ``x' = D + sqrt(s'^2 - u^2) (x - D) / s + u z`` with ``u = s' sqrt(1 - s'^2 / s^2)``."""
    n = len(x)
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = denoise(x, _levels(sigmas[i], n, x))
        up = s_next * math.sqrt(max(0.0, 1.0 - (s_next / s) ** 2))
        down = math.sqrt(max(0.0, s_next**2 - up**2))
        z = torch.randn(x.shape, generator=generator).to(x)
        x = d + down * (x - d) / s + up * z
    return x


# ------------------------------------------------------------------------------------------- augmentations
def reconstruction_augment(x: Tensor, generator: torch.Generator, *, flip: float = 0.5, brightness: float = 0.2,
                           brightness_p: float = 0.5, blur_kernel: int = 7, blur_sigma: float = 3.0,
                           blur_p: float = 0.5) -> Tensor:
    """The reconstruction's kornia pipeline (official ``attack.py``: ``RandomHorizontalFlip()``, ``ColorJitter(
    brightness=0.2, p=0.5)``, ``RandomGaussianBlur((7, 7), (3, 3), p=0.5)``) on ``[0, 1]`` images, differentiable,
    every draw from ``generator``."""
    from kornia.enhance import adjust_brightness_accumulative
    from kornia.filters import gaussian_blur2d
    from kornia.geometry.transform import hflip

    n = x.shape[0]
    mirror = (torch.rand(n, generator=generator) < flip).to(x.device).view(-1, 1, 1, 1)
    jitter = torch.rand(n, generator=generator) < brightness_p
    factor = 1 - brightness + 2 * brightness * torch.rand(n, generator=generator)
    factor = torch.where(jitter, factor, torch.ones(n)).to(x)
    blur = (torch.rand(n, generator=generator) < blur_p).to(x.device).view(-1, 1, 1, 1)
    out = torch.where(mirror, hflip(x), x)
    if brightness > 0:
        out = adjust_brightness_accumulative(out.clamp(0, 1), factor).clamp(0, 1)
    if blur_kernel > 1 and blur_sigma > 0 and bool(blur.any()):
        k = int(blur_kernel) | 1
        sig = torch.tensor([[blur_sigma, blur_sigma]], dtype=x.dtype, device=x.device)
        out = torch.where(blur, gaussian_blur2d(out, (k, k), sig.expand(n, 2), border_type="reflect"), out)
    return out


# ------------------------------------------------------------------------------------------------ PGD step
def pgd_l2_targeted(target: Any, x: Tensor, labels: Tensor, *, eps: float, step_size: float, iterations: int,
                    generator: torch.Generator, random_start: bool = True) -> tuple[Tensor, Tensor]:
    """The official final step (``robustness``' targeted L2 PGD, ``use_best``): from a random point on the sphere of
    radius ``eps`` around ``x`` (clamped to [0, 1]), ``iterations`` steps of ``step_size`` along the normalised
    gradient that lowers ``CE(T(x'), y)``, each projected back into the ``eps`` ball and [0, 1]; returns the images
    of lowest cross-entropy seen (the final point scored once more) and that cross-entropy. ``iterations + 1``
    queries per image."""
    orig = x.detach()
    flat = lambda v: v.reshape(len(v), -1)  # noqa: E731
    cur = orig
    if random_start:
        r = torch.randn(orig.shape, generator=generator).to(orig)
        cur = (orig + eps * r / (flat(r).norm(dim=1).view(-1, *[1] * (orig.dim() - 1)) + 1e-10)).clamp(0, 1)
    best_x, best_loss = None, None
    for it in range(iterations + 1):
        v = cur.detach().requires_grad_(it < iterations)
        with torch.set_grad_enabled(it < iterations):
            loss = F.cross_entropy(target.logits(v), labels.to(target.device), reduction="none").to(orig.device)
        with torch.no_grad():
            if best_loss is None:
                best_x, best_loss = v.detach().clone(), loss.detach().clone()
            else:
                better = loss < best_loss
                best_x[better], best_loss[better] = v.detach()[better], loss.detach()[better]
        if it == iterations:
            break
        (grad,) = torch.autograd.grad(-loss.mean(), [v])
        with torch.no_grad():
            g = grad / (flat(grad).norm(dim=1).view(-1, *[1] * (grad.dim() - 1)) + 1e-10)
            moved = v + step_size * g
            diff = (moved - orig).renorm(p=2, dim=0, maxnorm=eps)
            cur = (orig + diff).clamp(0, 1)
    return best_x, best_loss


# ------------------------------------------------------------------------------------------------ stage 1
#: the fine-tuned layers (official ``layers``: ``label_emb``, ``middle_block.{0,2}.{in_layers.2,out_layers.3}``,
#: ``middle_block.1.proj``), as named in the EDM denoiser's diffusers UNet
FINETUNED = ("unet.class_embedding.", "unet.mid_block.resnets.", "unet.mid_block.attentions.")
_FINETUNED_LEAVES = (".conv1.", ".conv2.", ".to_out.0.")


def finetune_parameters(denoiser: nn.Module) -> list[nn.Parameter]:
    """The parameters Diff-MI fine-tunes: the class embedding, the middle block's residual convolutions and its
    attention's output projection."""
    out = []
    for name, p in denoiser.named_parameters():
        if name.startswith(FINETUNED[0]) or (name.startswith(FINETUNED[1:]) and any(s in name for s in _FINETUNED_LEAVES)):
            out.append(p)
    if not out:
        raise UsageError("Diff-MI: the denoiser has no class embedding or middle block to fine-tune")
    return out


def finetune(denoiser: nn.Module, target: Any, p_reg: Tensor, classes: Tensor, *, epochs: int, threshold: float,
             batch_size: int, lr: float, steps: int, guidance: float, aug_times: int, k: int, alpha: float,
             flip: bool, seed: int) -> dict[str, Any]:
    """``run_cls_only``: fine-tune ``denoiser`` in place (module docstring, step 3); ``target`` (the attacker's view)
    scores every augmented prediction (``logits`` and, with ``alpha``, ``features``: ``2 x 8 x aug_times`` queries
    per class and batch at 10 steps). Returns facts."""
    dev = denoiser.device
    g = torch.Generator().manual_seed(int(seed))
    params = finetune_parameters(denoiser)
    denoiser.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sigmas = dpm_solver_sigmas(steps)
    p_reg = p_reg.to(target.device)
    acc_mean, epoch, history = 0.0, 0, []
    with progress.task("Diff-MI: fine-tuning the diffusion model to the target", total=epochs, unit="epoch") as task:
        while acc_mean < threshold and epoch < epochs:
            hits: list[float] = []
            order = classes[torch.randperm(len(classes), generator=g)]
            for i in range(0, len(order), batch_size):
                y = order[i : i + batch_size].to(dev)
                noise = torch.randn((len(y), *denoiser.image_shape), generator=g).to(dev)
                x_t = noise * math.sqrt(1.0 + float(sigmas[0]) ** 2)  # the VP x_T ~ N(0, I) in sigma space
                preds = dpm_solver_pp_2m(guided(denoiser, y, guidance), x_t, sigmas)
                x01 = ((torch.cat(preds) + 1) / 2).clamp(0, 1)
                views = torch.cat([plg_augment(x01, g, flip=0.5 if flip else 0.0, jitter_p=0.5) for _ in range(aug_times)])
                yy = y.repeat(len(preds) * aug_times).to(target.device)
                views = views.to(target.device)
                logits = target.logits(views)
                loss = topk_margin_loss(logits, yy, k).mean()
                if alpha > 0:
                    loss = loss + alpha * p_reg_loss(target.features(views), yy, p_reg).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                final = logits.view(aug_times, len(preds), len(y), -1)[:, -1].argmax(-1)
                hits.append(float((final == y.to(final.device)).float().mean()))
            acc_mean = sum(hits) / len(hits)
            history.append(acc_mean)
            epoch += 1
            task.advance(1, info=f"acc {acc_mean:.2f}")
    for p in params:
        p.grad = None
    denoiser.eval().requires_grad_(False)
    return {"finetune_epochs": epoch, "finetune_acc": acc_mean, "finetune_acc_history": history}


# ------------------------------------------------------------------------------------------------ stage 2
def reconstruct(denoiser: nn.Module, target: Any, y: Tensor, p_reg: Tensor, generator: torch.Generator, *,
                steps: int, guidance: float, lr: float, aug_times: int, k: int, alpha: float, t_jitter: int,
                clip: float, renoise_t: int, ddim_steps: int, flip: bool, blur_kernel: int, blur_sigma: float) -> Tensor:
    """``Iterative_Image_Reconstruction`` (module docstring, step 4) for identities ``y``; images in [0, 1]."""
    dev = denoiser.device
    y = y.to(dev)
    img = torch.randn((len(y), *denoiser.image_shape), generator=generator).to(dev).requires_grad_(True)
    opt = torch.optim.Adamax([img], lr=lr)
    yy = y.repeat(aug_times).to(target.device)
    p_reg = p_reg.to(target.device)
    norm_track = torch.zeros((), device=dev)
    for i in range(steps):
        jitter = int(torch.randint(-t_jitter, t_jitter + 1, (1,), generator=generator)) if t_jitter > 0 else 0
        sigma = float(ddpm_sigma(reconstruction_t(i, steps, jitter)))
        eps = torch.randn(img.shape, generator=generator).to(dev)
        x_t = img + sigma * eps
        d = guided(denoiser, y, guidance)(x_t, torch.tensor(sigma, device=dev))
        loss = F.mse_loss((x_t - d) / sigma, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            norm = torch.linalg.norm(img.grad)
            norm_track = norm if i == 0 else 0.5 * norm_track + 0.5 * norm
        opt.step()
        x01 = (img + 1) / 2
        views = torch.cat([reconstruction_augment(x01, generator, flip=0.5 if flip else 0.0, blur_kernel=blur_kernel,
                                                  blur_sigma=blur_sigma) for _ in range(aug_times)]).clamp(0, 1)
        views = views.to(target.device)
        loss = topk_margin_loss(target.logits(views), yy, k).mean()
        if alpha > 0:
            loss = loss + alpha * p_reg_loss(target.features(views), yy, p_reg).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([img], float(clip * norm_track))
        opt.step()
    with torch.no_grad():
        levels = reconstruction_levels(renoise_t, ddim_steps)
        x = img.detach() + float(levels[0]) * torch.randn(img.shape, generator=generator).to(dev)
        x = ancestral_sample(guided(denoiser, y, guidance), x, levels, generator)
    return ((x + 1) / 2).clamp(0, 1)


# --------------------------------------------------------------------------------------------- the attack
class DiffMI(Attack):
    name = "diff-mi"
    paper = "https://arxiv.org/abs/2407.11424"
    summary = ("White-box: a class-conditional diffusion model pre-trained on target-pseudo-labelled public data and "
               "fine-tuned to the target, then iterative reconstruction (diffusion loss + top-k margin and class-wise "
               "p_reg losses on augmented copies), guided re-sampling and a final targeted L2 PGD step.")
    requires = frozenset({C.GRAD, C.LOGITS, C.FEATURES})
    needs_prior = False

    class Config(AttackConfig):
        # ---- pseudo-labels (top_n_selection.py; README data dir VGG16_top30)
        top_n: int = Field(30, ge=1, description="public images pseudo-labelled per target class (official: top30)")
        # ---- the diffusion network (script_util.py / attack.py load_models)
        width: int = Field(128, ge=4, description="UNet base channels (official num_channels: 128)")
        channel_mult: list[int] = Field([1, 2, 3, 4], min_length=1, description="channel multiplier per level "
                                                                               "(official at 64 px: 1, 2, 3, 4)")
        layers_per_block: int = Field(3, ge=1, description="residual blocks per level (official num_res_blocks: 3)")
        attention: list[int] = Field([16, 8], description="resolutions with self-attention (official: 16, 8)")
        dropout: float = Field(0.0, ge=0, lt=1, description="dropout (official: 0)")
        # ---- pre-training (free_train.py, README)
        pretrain_steps: int = Field(50000, ge=1, description="pre-training iterations (README: 50,000)")
        pretrain_batch_size: int = Field(150, ge=1, description="pre-training batch (README: 150)")
        pretrain_lr: float = Field(1e-4, gt=0, description="AdamW learning rate, no weight decay (official: 1e-4)")
        ema_halflife_images: float = Field(1.04e6, gt=0, description="EMA half-life in images (official EMA 0.9999 "
                                                                     "per step of 150: 6,931 steps = 1.04 M images)")
        ema_rampup_ratio: float | None = Field(None, gt=0, description="EDM's EMA ramp-up (half-life at most this "
                                                                       "x the images seen); official: none")
        cond_drop: float = Field(0.1, ge=0, lt=1, description="probability of the null class (official: 0.1)")
        flip: bool = Field(True, description="horizontal flips in pre-training data and both augmentations "
                                             "(official: on; off for digits)")
        # ---- fine-tuning (fintune_train.py, run_cls_only)
        finetune_epochs: int = Field(100, ge=0, description="maximum fine-tuning epochs over the classes (official: "
                                                            "100; 0: no fine-tuning)")
        threshold: float = Field(0.99, ge=0, le=1, description="stop once an epoch's mean accuracy reaches it "
                                                               "(official: 0.99)")
        finetune_batch_size: int = Field(4, ge=1, description="classes per fine-tuning step (official: 4)")
        finetune_lr: float = Field(2e-4, gt=0, description="AdamW learning rate (official: 2e-4)")
        finetune_steps: int = Field(10, ge=2, description="DPM-Solver++(2M) steps (official: 10)")
        finetune_guidance: float = Field(3.0, ge=0, description="guidance while fine-tuning (official: 3)")
        finetune_aug_times: int = Field(2, ge=1, description="augmented copies per prediction (official: 2)")
        train_seed: int = Field(42, ge=0, description="seed of what Diff-MI derives (official set_random_seed(42))")
        # ---- reconstruction (attack.py)
        steps: int = Field(30, ge=1, description="reconstruction steps (official --steps 30)")
        guidance: float = Field(3.0, ge=0, description="classifier-free guidance w (official --w 3)")
        renoise_t: int = Field(100, ge=1, le=999, description="DDPM step the result is re-noised to and sampled "
                                                               "back from (official --ddim_step 100)")
        ddim_steps: int = Field(100, ge=1, le=1000, description="the DDIM grid's size (official: 100)")
        aug_times: int = Field(4, ge=1, description="augmented copies per step (official --aug_times 4)")
        k: int = Field(20, ge=0, description="top-k of the margin loss (official --k 20; capped at K - 1)")
        alpha: float = Field(1.0, ge=0, description="weight of the p_reg loss (official --alpha 1)")
        lr: float = Field(1.0, gt=0, description="Adamax learning rate on the image (official: 1.0)")
        t_jitter: int = Field(50, ge=0, description="uniform jitter of the timestep (official: +-50)")
        clip: float = Field(1.25, gt=0, description="classifier gradient clipped to this x the diffusion "
                                                    "gradient's running norm (official: 1.25)")
        blur_kernel: int = Field(7, ge=1, description="Gaussian blur kernel of the augmentation (official: 7)")
        blur_sigma: float = Field(3.0, ge=0, description="its sigma (official: 3)")
        batch_size: int = Field(64, ge=1, description="images reconstructed together (official --batch_size 64)")
        # ---- the final step (robustness PGD: constraint '2', eps 0.5, step_size 0.1, iterations 10)
        pgd_eps: float = Field(0.5, ge=0, description="L2 radius of the final step (official: 0.5)")
        pgd_step: float = Field(0.1, gt=0, description="its step size (official: 0.1)")
        pgd_iterations: int = Field(10, ge=0, description="its iterations (official: 10; 0: none)")

    # ------------------------------------------------------------------------------------ derived models
    def _build(self, shape: tuple[int, int, int], k: int) -> nn.Module:
        from invertkit.plugins.priors.edm import build_denoiser

        cfg = self.config
        return build_denoiser(shape, cond_kind="class", num_classes=k, width=cfg.width, channel_mult=cfg.channel_mult,
                              layers_per_block=cfg.layers_per_block, attention=cfg.attention, dropout=cfg.dropout)

    def diffusion_models(self, target: Any) -> tuple[nn.Module, Tensor, dict[str, Any]]:
        """The fine-tuned diffusion model and ``p_reg`` for ``target``: pseudo-labels and ``p_reg`` through its view
        (every run), the pre-trained and fine-tuned networks trained or loaded from the cache (paid for again)."""
        from invertkit.core.zoo.model_cache import fingerprint
        from invertkit.plugins.priors.edm import train_denoiser
        from invertkit.plugins.priors.plg_cgan import pseudo_label

        from invertkit.plugins.attacks.identity_terms import public_images

        cfg, public = self.config, public_images(self)
        shape, k = tuple(int(s) for s in target.input_shape), int(target.num_classes)
        if tuple(public.shape[1:]) != shape:
            raise UsageError(f"attack 'diff-mi': public images of shape {tuple(public.shape[1:])} but the target takes {shape}")
        if cfg.top_n > len(public):
            raise ConfigError(f"attack 'diff-mi': top_n ({cfg.top_n}) exceeds the {len(public)} public images")
        q0 = target.queries
        x_pub, y_pub, _ = pseudo_label(target, public, cfg.top_n)
        p_reg = class_feature_means(target, x_pub, y_pub, k) if cfg.alpha > 0 or cfg.finetune_epochs > 0 else None
        facts: dict[str, Any] = {"pseudo_label_queries": target.queries - q0}
        if p_reg is None:
            p_reg = torch.zeros(k, 1)
        dev = target.device
        net_fields = ("width", "channel_mult", "layers_per_block", "attention", "dropout", "pretrain_steps",
                      "pretrain_batch_size", "pretrain_lr", "ema_halflife_images", "ema_rampup_ratio", "cond_drop",
                      "flip", "train_seed")
        key = {"what": "diff-mi-cdm", "data": fingerprint(x_pub, y_pub), "shape": list(shape), "classes": k,
               "cfg": {f: getattr(cfg, f) for f in net_fields}}

        def build() -> nn.Module:
            torch.manual_seed(cfg.train_seed)
            return self._build(shape, k).to(dev)

        def pretrain() -> nn.Module:
            images, labels = x_pub, y_pub
            if cfg.flip:  # random flips as the data set doubled by its mirror images
                images, labels = torch.cat([images, images.flip(-1)]), torch.cat([labels, labels])
            with progress.task("Diff-MI: pre-training the conditional diffusion model", total=1, unit="model") as t:
                ema, info = train_denoiser(build(), images, labels, steps=cfg.pretrain_steps,
                                           batch_size=cfg.pretrain_batch_size, lr=cfg.pretrain_lr,
                                           ema_halflife_images=cfg.ema_halflife_images, cond_drop=cfg.cond_drop,
                                           seed=cfg.train_seed, lr_rampup_images=0,
                                           ema_rampup_ratio=cfg.ema_rampup_ratio)
                t.advance(1, info=f"loss {info['loss']:.3f}")
            facts["pretrain_loss"] = info["loss"]
            return ema

        q1 = target.queries
        cdm = derive(self.context, key, pretrain, build, label="diff-mi-cdm")
        if cfg.finetune_epochs == 0:
            return cdm, p_reg, facts
        ft_fields = ("finetune_epochs", "threshold", "finetune_batch_size", "finetune_lr", "finetune_steps",
                     "finetune_guidance", "finetune_aug_times", "k", "alpha", "flip", "train_seed")
        ft_key = {"what": "diff-mi-finetuned", "cdm": key, "p_reg": fingerprint(p_reg),
                  "cfg": {f: getattr(cfg, f) for f in ft_fields}}

        def tune() -> nn.Module:
            net = copy.deepcopy(cdm)
            facts.update(finetune(net, target, p_reg, torch.arange(k), epochs=cfg.finetune_epochs,
                                  threshold=cfg.threshold, batch_size=cfg.finetune_batch_size, lr=cfg.finetune_lr,
                                  steps=cfg.finetune_steps, guidance=cfg.finetune_guidance,
                                  aug_times=cfg.finetune_aug_times, k=cfg.k, alpha=cfg.alpha, flip=cfg.flip,
                                  seed=cfg.train_seed))
            return net

        tuned = derive(self.context, ft_key, tune, build, label="diff-mi-finetuned")
        facts["finetune_queries"] = target.queries - q1
        return tuned, p_reg, facts

    # --------------------------------------------------------------------------------------------- run
    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        cfg = self.config
        k = int(target.num_classes)
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise UsageError(f"attack 'diff-mi': identities must be target classes in [0, {k})")
        if len(labels) == 0:
            return empty_result(self.name, tuple(int(s) for s in target.input_shape), {}, seed)
        denoiser, p_reg, facts = self.diffusion_models(target)
        denoiser.requires_grad_(False)
        q0 = target.queries
        images, scores = [], []
        with progress.task("Diff-MI: iterative reconstruction", total=len(labels), unit="image") as task:
            for i in range(0, len(labels), cfg.batch_size):
                y = labels[i : i + cfg.batch_size]
                x = reconstruct(denoiser, target, y, p_reg, generator, steps=cfg.steps, guidance=cfg.guidance,
                                lr=cfg.lr, aug_times=cfg.aug_times, k=cfg.k, alpha=cfg.alpha, t_jitter=cfg.t_jitter,
                                clip=cfg.clip, renoise_t=cfg.renoise_t, ddim_steps=cfg.ddim_steps, flip=cfg.flip,
                                blur_kernel=cfg.blur_kernel, blur_sigma=cfg.blur_sigma).to(target.device)
                if cfg.pgd_iterations > 0:
                    x, ce = pgd_l2_targeted(target, x, y, eps=cfg.pgd_eps, step_size=cfg.pgd_step,
                                            iterations=cfg.pgd_iterations, generator=generator)
                else:
                    with torch.no_grad():
                        ce = F.cross_entropy(target.logits(x), y.to(target.device), reduction="none")
                images.append(x.detach().cpu())
                scores.append(-ce.detach().float().cpu())
                task.advance(len(y))
        facts["attack_queries"] = target.queries - q0
        return AttackResult(self.name, torch.cat(images), labels, torch.cat(scores), 0, 0.0, seed, {}, extras=facts)


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(DiffMI)
