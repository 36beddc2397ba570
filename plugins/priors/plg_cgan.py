"""PLG-MI's pseudo-label-guided conditional GAN (Yuan et al., AAAI 2023, https://arxiv.org/abs/2302.09814).

Stage 1 of PLG-MI, as the official code does it (``top_n_selection.py``, ``train_cgan.py``):

1. **Top-n selection.** The target classifies every public image; for each target class ``c`` the ``n``
   public images with the highest confidence ``softmax(T(x))_c`` become pseudo-labelled ``c`` (classes are
   ranked independently, so one image may be chosen for several classes). Default ``n = 30``.
2. **Conditional GAN** on the pseudo-labelled images: a generator with class-conditional BatchNorm (per class
   scale and shift, Miyato & Koyama 2018, https://arxiv.org/abs/1802.05637) and a spectrally normalised
   projection discriminator ``D(x, y) = psi(phi(x)) + <embed(y), phi(x)>``, hinge loss. Each iteration makes
   one generator step, then ``n_dis = 5`` discriminator steps; fake labels are uniform over the K classes and
   the real images get a uniform ``[0, 1/256)`` dequantisation noise. The generator also minimises
   ``alpha * L_inv`` with ``alpha = 0.2``: the max-margin loss ``-l_y + max_{j != y} l_j`` of the target on
   randomly augmented fakes (random resized crop with scale 0.8-1, brightness/contrast jitter 0.2 with
   probability 0.5, horizontal flip, rotation up to 5 degrees; the official code uses kornia for these).
   Adam(lr 2e-4, betas (0.0, 0.9)), batch 64, z 128, 30,000 iterations.

The networks are invertkit's DCGAN sized to the image (``wgan_gp.Generator`` with conditional BatchNorm,
the ``wgan_gp.conv_trunk`` body with spectral norm for the discriminator) instead of PLG-MI's 64x64 ResNets.
Images are in ``[0, 1]`` (sigmoid output).

The target is the attacker's view of the target *as defended* in the cell: pseudo-labels come from its
released scores and ``L_inv`` is computed on its log-confidences (the margin ``-l_y + max_{j != y} l_j`` and
the cross-entropy are the same on log-softmax as on logits: the per-row constant cancels), with gradients
through it, so it needs ``probs`` and ``grad`` (``target_requires``) and every query is the cell's.

The prior is *conditional*: ``decode(z, labels)`` with labels = target classes. PLG-MI's attack does not use
the discriminator, so ``has_discriminator`` is False; :meth:`PLGPrior.conditional_realism` exposes
``D(x, y)`` for whoever wants it.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from invertkit.core.errors import ConfigError, ShapeError, UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.capability import Capability
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.prior import Prior, PriorBuilder
from invertkit.plugins.priors.kedmi_gan import target_classes, target_log_probs
from invertkit.plugins.priors.wgan_gp import Generator, GeneratorPrior, conv_trunk, gan_training_start


# ----------------------------------------------------------------------------------------- pseudo labels
def top_n_selection(probs: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """PLG-MI's top-n selection over a ``(N, K)`` confidence matrix: for every class ``c`` the indices of the
    ``n`` rows with the largest ``probs[:, c]``, most confident first. Returns ``(indices, labels)``, each of
    length ``K * n``, grouped by class."""
    if probs.dim() != 2:
        raise ShapeError(f"top-n selection needs an (N, K) confidence matrix, got shape {tuple(probs.shape)}")
    if not 1 <= n <= probs.shape[0]:
        raise ConfigError(f"top_n must be between 1 and the number of public images ({probs.shape[0]}), got {n}")
    idx = torch.topk(probs.t(), n, dim=1).indices  # (K, n), descending confidence
    labels = torch.arange(probs.shape[1]).repeat_interleave(n)
    return idx.reshape(-1), labels


def pseudo_label(target, images: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:  # noqa: ANN001
    """``(images, pseudo_labels, confidences)`` of the top-``n`` public images per target class (``target``: a
    TargetModel, queried once per image)."""
    probs = F.softmax(target_log_probs(target, images), dim=1)
    idx, labels = top_n_selection(probs, n)
    return images[idx], labels, probs[idx, labels]


# ------------------------------------------------------------------------------------------------ losses
def max_margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """PLG-MI's ``L_inv``: ``mean(-l_y + max_{j != y} l_j)``."""
    own = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return (others.max(1).values - own).mean()


def hinge_discriminator_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()


def random_augment(x: Tensor, generator: torch.Generator, *, scale: tuple[float, float] = (0.8, 1.0),
                   brightness: float = 0.2, contrast: float = 0.2, jitter_p: float = 0.5, flip: bool = True,
                   degrees: float = 5.0) -> Tensor:
    """PLG-MI's augmentation of generated images, differentiable in ``x``: a square random resized crop
    (area fraction in ``scale``), then per-image brightness/contrast jitter with probability ``jitter_p``,
    a random horizontal flip and a rotation up to ``degrees``; the geometric part is one bilinear warp."""
    n = x.shape[0]
    u = lambda: torch.rand(n, generator=generator)  # noqa: E731
    side = torch.sqrt(scale[0] + (scale[1] - scale[0]) * u())  # crop side as a fraction of the image
    tx, ty = (2 * u() - 1) * (1 - side), (2 * u() - 1) * (1 - side)
    angle = (2 * u() - 1) * math.radians(degrees)
    sign = torch.where(u() < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([side * cos * sign, -side * sin, tx], 1),
                         torch.stack([side * sin * sign, side * cos, ty], 1)], 1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    on = (u() < jitter_p).float()
    b = 1 + on * (2 * u() - 1) * brightness
    c = 1 + on * (2 * u() - 1) * contrast
    out = out * b.to(x)[:, None, None, None]
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * c.to(x)[:, None, None, None] + mean
    return out.clamp(0, 1)


# ---------------------------------------------------------------------------------------------- networks
class ConditionalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm without its own affine, then a per-class scale (init 1) and shift (init 0) from embeddings."""

    takes_labels = True

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__(channels, affine=False)
        self.num_classes = num_classes
        self.gamma = nn.Embedding(num_classes, channels)
        self.beta = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if labels is None:
            raise UsageError("a conditional generator needs class labels")
        out = super().forward(x)
        return self.gamma(labels)[:, :, None, None] * out + self.beta(labels)[:, :, None, None]


class ProjectionDiscriminator(nn.Module):
    """Spectrally normalised DCGAN critic body ``phi`` with a projection head:
    ``D(x, y) = psi(phi(x)) + <embed(y), phi(x)>``."""

    def __init__(self, image_shape: tuple[int, int, int], width: int, num_classes: int) -> None:
        super().__init__()
        body, flat = conv_trunk(image_shape, width, spectral=True)
        self.body = body
        self.linear = spectral_norm(nn.Linear(flat, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, flat))
        nn.init.xavier_uniform_(self.linear.parametrizations.weight.original)
        nn.init.xavier_uniform_(self.embed.parametrizations.weight.original)
        self.num_classes = num_classes

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        h = self.body(x)
        return self.linear(h).squeeze(1) + (self.embed(labels) * h).sum(1)


# ------------------------------------------------------------------------------------------------- prior
def prior_labels(prior: Prior, n: int, labels: Tensor | None) -> Tensor:
    """The labels a conditional prior (with ``num_classes``) decodes ``n`` latents with: ``labels`` checked (one
    per latent, target classes in ``[0, num_classes)``) and moved to the prior's device, or latent ``i`` as class
    ``i mod K`` when ``labels`` is None. Shared by the conditional priors (plg-cgan, edm)."""
    k = int(prior.num_classes)  # type: ignore[attr-defined]
    if labels is None:
        return torch.arange(n, device=prior.device) % k
    labels = torch.as_tensor(labels).to(prior.device).long().reshape(-1)
    if len(labels) != n:
        raise ShapeError(f"prior '{prior.name}': {n} latents but {len(labels)} labels")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise UsageError(f"prior '{prior.name}': labels must be target classes in [0, {k}), "
                         f"got {int(labels.min())}..{int(labels.max())}")
    return labels


class PLGPrior(GeneratorPrior):
    """PLG-MI's conditional generator: ``decode(z, labels)`` draws class ``labels`` (target classes).

    Without labels, latent ``i`` is decoded as class ``i mod K`` (an even spread over the classes).
    """

    name = "plg-cgan"
    conditional = True
    has_discriminator = False

    def __init__(self, generator: Generator, discriminator: ProjectionDiscriminator, latent_dim: int) -> None:
        super().__init__(generator, discriminator, latent_dim)
        self.discriminator = discriminator
        self.num_classes = discriminator.num_classes

    def _labels(self, n: int, labels: Tensor | None) -> Tensor:
        return prior_labels(self, n, labels)

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.generator(self.check_latent(z), self._labels(len(z), labels))

    def conditional_realism(self, x: Tensor, labels: Tensor) -> Tensor:
        """The projection discriminator's score ``D(x, y)`` (higher: more realistic for class ``y``)."""
        return self.discriminator(x, self._labels(len(x), labels))

    def _block_labels(self, n: int, labels: Tensor | None) -> Tensor | None:
        return self._labels(n, labels)  # layered decoding: the conditional BatchNorms read the labels


class PLGCGANBuilder(PriorBuilder):
    name = "plg-cgan"
    layered = True  # its generator decodes block by block (decode_to / decode_from)
    summary = "PLG-MI's cGAN: top-n pseudo-labelled public images, conditional BN generator, projection discriminator, hinge."
    paper = "https://arxiv.org/abs/2302.09814"
    needs_target = True
    target_requires = frozenset({Capability.PROBS, Capability.GRAD})
    conditional = True

    class Config(ComponentConfig):
        num_classes: int | None = Field(None, ge=2, description="K, the target's number of classes (the cGAN's classes); required")
        top_n: int = Field(30, ge=1, description="public images pseudo-labelled per target class (PLG-MI: 30)")
        latent_dim: int = Field(128, ge=2, description="latent size (PLG-MI's gen_dim_z: 128)")
        width: int = Field(64, ge=4, description="channels of the last generator stage / first discriminator stage (PLG-MI: 64)")
        steps: int = Field(30000, ge=1, description="generator iterations (PLG-MI's max_iteration: 30000)")
        n_dis: int = Field(5, ge=1, description="discriminator steps per generator step (PLG-MI: 5)")
        batch_size: int = Field(64, ge=2, description="batch size (PLG-MI: 64)")
        lr: float = Field(2e-4, gt=0, description="Adam learning rate of both networks (PLG-MI: 2e-4)")
        beta1: float = Field(0.0, ge=0, lt=1, description="Adam beta1 (PLG-MI: 0.0)")
        beta2: float = Field(0.9, ge=0, lt=1, description="Adam beta2 (PLG-MI: 0.9)")
        alpha: float = Field(0.2, ge=0, description="weight of the inversion loss L_inv in the generator loss (PLG-MI: 0.2)")
        inv_loss: Literal["margin", "ce"] = Field("margin", description="L_inv: max-margin (PLG-MI's default) or cross-entropy")
        augment: bool = Field(True, description="augment the fakes the target scores for L_inv (PLG-MI: on)")
        flip: bool = Field(True, description="horizontal flips in that augmentation (PLG-MI: on; off for digits)")
        dequantize: bool = Field(True, description="add U[0, 1/256) noise to the real images (PLG-MI: on)")

    def _classes(self) -> int:
        return target_classes(self)

    def networks(self, image_shape: tuple[int, int, int]) -> dict[str, nn.Module]:
        cfg, k = self.config, self._classes()
        return {
            "generator": Generator(image_shape, cfg.latent_dim, cfg.width, norm=lambda ch: ConditionalBatchNorm2d(k, ch)),
            "discriminator": ProjectionDiscriminator(image_shape, cfg.width, k),
        }

    def train(self, nets: dict[str, nn.Module], public_images: Tensor, *, seed: int, progress=None,  # noqa: ANN001
              target=None) -> dict:  # noqa: ANN001 - a TargetModel (the attacker's view)
        cfg, k = self.config, self._classes()
        if target is None:
            raise ConfigError("prior 'plg-cgan' is trained on the target's pseudo-labels: train() needs target=")
        x_pub, y_pub, conf = pseudo_label(target, public_images, cfg.top_n)
        if int(y_pub.max()) + 1 != k:
            raise ConfigError(f"prior 'plg-cgan': num_classes is {k} but the target has {int(y_pub.max()) + 1} outputs")
        G, D = nets["generator"], nets["discriminator"]
        g, opt_g, opt_d = gan_training_start(G, D, cfg, seed)
        n, bs = len(x_pub), cfg.batch_size
        perm, pos = torch.randperm(n, generator=g), 0
        t0 = time.perf_counter()
        loss_g = loss_d = loss_inv = hit = float("nan")
        for it in range(cfg.steps):
            # ---- generator: hinge + alpha * L_inv on augmented fakes
            D.requires_grad_(False)
            z = torch.randn(bs, cfg.latent_dim, generator=g)
            yf = torch.randint(0, k, (bs,), generator=g)
            fake = G(z, yf)
            seen = random_augment(fake, g, flip=cfg.flip) if cfg.augment else fake
            logits = target.log_probs(seen.to(target.device)).to(seen.device)
            inv = max_margin_loss(logits, yf) if cfg.inv_loss == "margin" else F.cross_entropy(logits, yf)
            lg = -D(fake, yf).mean() + cfg.alpha * inv
            opt_g.zero_grad(set_to_none=True)
            lg.backward()
            opt_g.step()
            D.requires_grad_(True)
            loss_g, loss_inv = float(lg.detach()), float(inv.detach())
            hit = float((logits.argmax(1) == yf).float().mean())
            # ---- discriminator: n_dis hinge steps
            for _ in range(cfg.n_dis):
                if pos + bs > n:
                    perm, pos = torch.randperm(n, generator=g), 0
                idx = perm[pos : pos + bs]
                pos += bs
                real, yr = x_pub[idx], y_pub[idx]
                if cfg.dequantize:
                    real = real + torch.rand(real.shape, generator=g) / 256.0
                z = torch.randn(len(idx), cfg.latent_dim, generator=g)
                yf = torch.randint(0, k, (len(idx),), generator=g)
                with torch.no_grad():
                    fake = G(z, yf)
                ld = hinge_discriminator_loss(D(real, yr), D(fake, yf))
                opt_d.zero_grad(set_to_none=True)
                ld.backward()
                opt_d.step()
                loss_d = float(ld.detach())
            if progress is not None and (it + 1) % 50 == 0:
                progress(it + 1, cfg.steps, loss_g)
        G.eval()
        D.eval()
        return {"seconds": time.perf_counter() - t0, "steps": cfg.steps, "pseudo_labelled": n,
                "mean_pseudo_confidence": float(conf.mean()), "loss_generator": loss_g, "loss_discriminator": loss_d,
                "loss_inversion": loss_inv, "fake_target_agreement": hit}

    def wrap(self, nets: dict[str, nn.Module]) -> Prior:
        return PLGPrior(nets["generator"], nets["discriminator"], self.config.latent_dim)  # type: ignore[arg-type]


@hookimpl
def invertkit_register_priors(register) -> None:  # noqa: ANN001
    register(PLGCGANBuilder)
