"""Random image augmentations on kornia, every draw from a caller's ``torch.Generator``.

One module for the augmentations invertkit's attacks and training loops use, each with its official parameters
as defaults and each deterministic for a seeded generator on the CPU (kornia's augmentation modules draw from
torch's global RNG, so the parameters are drawn here, on the CPU, and kornia's differentiable geometry and
colour operations apply them):

* :func:`random_resized_crop`: torchvision's ``RandomResizedCrop`` (+ ``RandomHorizontalFlip``), as Plug &
  Play Attacks use it (Struppek et al., ICML 2022, https://arxiv.org/abs/2201.12179; official
  ``attacks/optimize.py``: scale 0.9-1.0, ratio 1.0; ``attacks/final_selection.py``: scale 0.5-0.9, ratio
  0.8-1.2, flip 0.5) and IF-GMI after them. Crop boxes are continuous (no rounding to whole pixels), so the
  transform suits 8x8 digits as well as 224x224 faces.
* :func:`plg_augment`: PLG-MI's pipeline (Yuan et al., AAAI 2023, https://arxiv.org/abs/2302.09814; official
  ``reconstruct.py``, kornia ``ImageSequential``): ``RandomResizedCrop(scale=(0.8, 1.0), ratio=(1.0, 1.0))``,
  ``ColorJitter(brightness=0.2, contrast=0.2)``, ``RandomHorizontalFlip()`` (p 0.5), ``RandomRotation(5)``
  (kornia's default p 0.5), in that order.
* :func:`random_shift`: the translation by up to one pixel (zero padding) that invertkit's small-image
  training uses (:func:`invertkit.core.zoo.train.augment`).

All but :func:`random_shift` are differentiable in the images (attacks optimise through them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["plg_augment", "random_resized_crop", "random_shift", "resized_crop_boxes"]


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def resized_crop_boxes(n: int, generator: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3), *, aspect: float = 1.0,
                       attempts: int = 10) -> Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` for ``n`` images of width/height ``aspect``: ``(n, 4)``
    boxes ``(x0, y0, w, h)`` as fractions of the image's width and height. Each image tries up to ``attempts``
    draws of an area fraction uniform in ``scale`` and an aspect ratio log-uniform in ``ratio`` and keeps the
    first that fits, at a uniform position; if none fits, torchvision's fallback, a central crop of the whole
    image at the nearest ratio in range. (Continuous: no rounding to pixels.)"""
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    area = scale[0] + (scale[1] - scale[0]) * torch.rand((n, attempts), generator=generator, dtype=torch.float64)
    r = torch.exp(lo + (hi - lo) * torch.rand((n, attempts), generator=generator, dtype=torch.float64))
    # w, h as fractions of the side: w_px * h_px = area * W * H and w_px / h_px = r
    w = torch.sqrt(area * r / aspect)
    h = torch.sqrt(area * aspect / r)
    fits = (w <= 1) & (h <= 1)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
    pick = first.clamp_min(0)[:, None]
    w, h = w.gather(1, pick).squeeze(1), h.gather(1, pick).squeeze(1)
    # the fallback: the whole image, cut to the nearest in-range ratio
    if aspect < ratio[0]:
        fw, fh = 1.0, aspect / ratio[0]
    elif aspect > ratio[1]:
        fw, fh = ratio[1] / aspect, 1.0
    else:
        fw, fh = 1.0, 1.0
    none = first < 0
    w = torch.where(none, torch.full_like(w, fw), w)
    h = torch.where(none, torch.full_like(h, fh), h)
    u = torch.rand((n, 2), generator=generator, dtype=torch.float64)
    x0 = torch.where(none, (1 - w) / 2, (1 - w) * u[:, 0])
    y0 = torch.where(none, (1 - h) / 2, (1 - h) * u[:, 1])
    return torch.stack([x0, y0, w, h], 1).float()


def _crop(x: Tensor, boxes: Tensor, mirror: Tensor) -> Tensor:
    """Crop each image to its box (fractions) and resize it back (kornia ``crop_and_resize``, bilinear), mirrored
    where ``mirror`` is set (the box's corners swapped left for right: one resampling)."""
    from kornia.geometry.transform import crop_and_resize

    n, _, hh, ww = x.shape
    b = boxes.to(device=x.device, dtype=x.dtype)
    x0, y0 = b[:, 0] * ww, b[:, 1] * hh
    x1, y1 = x0 + b[:, 2] * ww - 1, y0 + b[:, 3] * hh - 1
    m = mirror.to(x.device)
    left, right = torch.where(m, x1, x0), torch.where(m, x0, x1)
    corners = torch.stack([torch.stack([left, y0], 1), torch.stack([right, y0], 1),
                           torch.stack([right, y1], 1), torch.stack([left, y1], 1)], 1)  # tl, tr, br, bl
    return crop_and_resize(x, corners, (hh, ww), mode="bilinear", align_corners=True)


def random_resized_crop(x: Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.9, 1.0),
                        ratio: tuple[float, float] = (1.0, 1.0), flip: float = 0.0) -> Tensor:
    """torchvision's ``RandomResizedCrop`` (+ ``RandomHorizontalFlip(flip)``), one draw per image, differentiable:
    a crop of :func:`resized_crop_boxes` (area fraction in ``scale``, aspect ratio in ``ratio``), resized back
    to the image size (bilinear), mirrored with probability ``flip``. Defaults: PPA's optimisation transform."""
    n, _, hh, ww = x.shape
    boxes = resized_crop_boxes(n, generator, scale, ratio, aspect=ww / hh)
    mirror = torch.rand(n, generator=generator) < flip
    return _crop(x, boxes, mirror)


def _jitter(x: Tensor, brightness: Tensor, contrast: Tensor, brightness_first: bool) -> Tensor:
    """kornia ``ColorJitter``'s brightness and contrast steps (torchvision's formulas), clamped to [0, 1]."""
    from kornia.enhance import adjust_brightness_accumulative, adjust_contrast_with_mean_subtraction

    x = x.clamp(0.0, 1.0)
    steps = [lambda v: adjust_brightness_accumulative(v, brightness),
             lambda v: adjust_contrast_with_mean_subtraction(v, contrast).clamp(0.0, 1.0)]
    for step in steps if brightness_first else steps[::-1]:
        x = step(x)
    return x.clamp(0.0, 1.0)


def plg_augment(x: Tensor, generator: torch.Generator, *, scale: tuple[float, float] = (0.8, 1.0),
                ratio: tuple[float, float] = (1.0, 1.0), brightness: float = 0.2, contrast: float = 0.2,
                flip: float = 0.5, degrees: float = 5.0, rotate_p: float = 0.5, jitter_p: float = 1.0) -> Tensor:
    """PLG-MI's augmentation (official ``reconstruct.py``), differentiable in ``x``, parameters per image: a
    random resized crop (area fraction in ``scale``, aspect ``ratio``), colour jitter (brightness factor and
    contrast factor uniform in ``[1 - b, 1 + b]``, applied in a random order per call as kornia's
    ``ColorJitter`` does; contrast blends with the image's grey mean), a horizontal flip (probability ``flip``)
    and, with probability ``rotate_p``, a rotation by up to ``degrees`` (bilinear, zero padding). The jitter
    applies to each image with probability ``jitter_p`` (kornia's ``ColorJitter(p=...)``; PLG-MI: 1, Diff-MI's
    fine-tuning: 0.5; below 1 it draws one more number per image, after the others). With everything off
    (``scale=(1, 1)``, 0 jitter, no flip, no rotation) it returns ``x``."""
    from kornia.geometry.transform import hflip, rotate

    n, _, hh, ww = x.shape
    boxes = resized_crop_boxes(n, generator, scale, ratio, aspect=ww / hh)
    b = _uniform(n, max(0.0, 1 - brightness), 1 + brightness, generator).to(x.device, x.dtype)
    c = _uniform(n, max(0.0, 1 - contrast), 1 + contrast, generator).to(x.device, x.dtype)
    brightness_first = bool(torch.rand(1, generator=generator) < 0.5)
    mirror = (torch.rand(n, generator=generator) < flip).to(x.device)
    turn = torch.rand(n, generator=generator) < rotate_p
    angle = torch.where(turn, _uniform(n, -degrees, degrees, generator), torch.zeros(n, dtype=torch.float64))
    if jitter_p < 1.0:  # the images left un-jittered get factors of 1
        keep = (torch.rand(n, generator=generator) < jitter_p).to(x.device)
        b, c = torch.where(keep, b, torch.ones_like(b)), torch.where(keep, c, torch.ones_like(c))
    out = _crop(x, boxes, torch.zeros(n, dtype=torch.bool))
    if brightness > 0 or contrast > 0:
        out = _jitter(out, b, c, brightness_first)
    out = torch.where(mirror.view(-1, 1, 1, 1), hflip(out), out)
    if degrees > 0 and rotate_p > 0 and bool(turn.any()):
        out = rotate(out, angle.to(x.device, x.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out


def random_shift(x: Tensor, generator: torch.Generator, max_shift: int = 1) -> Tensor:
    """Random translation by up to ``max_shift`` pixels (zero padding): the usual small-image augmentation,
    one shift ``(dx, dy)`` per image, each uniform in ``[-max_shift, max_shift]``."""
    if max_shift <= 0:
        return x
    n = x.shape[0]
    pad = F.pad(x, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    h, w = x.shape[2], x.shape[3]
    rows = (torch.arange(h)[None, :] + dy[:, None])[:, :, None].expand(n, h, w)
    cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, :].expand(n, h, w)
    idx = (rows * pad.shape[3] + cols).reshape(n, 1, h * w).expand(n, x.shape[1], h * w)
    return pad.reshape(n, x.shape[1], -1).gather(2, idx.to(x.device)).reshape_as(x)
