"""KEDMI's inversion-specific GAN (Chen et al., ICCV 2021, https://arxiv.org/abs/2010.04092).

Knowledge-Enriched Distributional Model Inversion trains its prior *with the target*: a semi-supervised GAN
(Salimans et al. 2016, https://arxiv.org/abs/1606.03498) on the public images whose discriminator has K + 1
outputs, the K target classes plus "fake". As in the official code (``k+1_gan.py``), the fake logit is fixed
at 0 and the discriminator outputs only the K class logits ``l(x)``; then ``D(x) = sigmoid(logsumexp l(x))``
is the probability that ``x`` is real. Per discriminator step, on three public batches (labelled, unlabelled,
generated):

* ``L_lab = softXEnt(l(x_lab), softmax(T(x_lab)))``: cross-entropy to the *target's soft labels* (the
  knowledge the target enriches the GAN with);
* ``L_unlab = 0.5 * (mean softplus(lse l(x_u)) - mean lse l(x_u) + mean softplus(lse l(G(z))))``: real vs
  fake, i.e. ``-log D(x_u) - log(1 - D(G(z)))`` halved;

and every ``n_dis``-th step one generator step with *feature matching*: the L1 distance between the mean
discriminator features of a generated batch and of a public batch, plus ``1e-4`` times the (batch-summed)
entropy of ``softmax l(G(z))``. The discriminator's features are its last convolutional stage (before
minibatch discrimination), its body convs use InstanceNorm (affine), and a minibatch-discrimination layer
(64 kernels of dimension 50) sits before the class head.

Defaults (official ``config/celeba.json`` + ``k+1_gan.py``): Adam(lr 2e-4, betas (0.5, 0.999)) for both
networks, batch 64, z 100, 120 epochs over the public set, ``n_critic`` 5, entropy weight 1e-4. The networks
are invertkit's DCGAN (``wgan_gp.Generator`` and the ``wgan_gp.conv_trunk`` critic body), sized to the image;
the discriminator body stops at a 4x4 map as the official ones do (:func:`discriminator_stages`). Ending it at
1x1 instead (one stage deeper) collapses the generator on 28x28 MNIST: feature matching on a pooled vector
leaves it free to emit one blob.

``realism(x) = log D(x) = logsigmoid(logsumexp l(x))``: KEDMI's attack minimises the prior loss
``mean(softplus(lse l) - lse l) = -mean log D(G(z))`` (``attack.py``, ``improved=True``), which is exactly
``-mean(realism)``. With minibatch discrimination on, a sample's score depends on the other samples in the
batch it is scored with (as in KEDMI, whose attack scores its 60 identities together).

The target is queried once per public image, through the attacker's view of the target *as defended* in the
cell (``log_probs``: the soft labels are ``softmax`` of them, the same as of the logits), so the queries are the
cell's and a defense that degrades the scores degrades the prior too (the official script reads the raw
network, and leaves it in training mode, a BatchNorm slip that we do not reproduce). It needs ``probs`` of the
defended target (``target_requires``); the bench skips its attacks, with the reason, where they are withheld.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import ConfigError, ShapeError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.capability import Capability, PriorFeature
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.prior import Prior, PriorBuilder
from invertkit.plugins.priors.wgan_gp import Generator, GeneratorPrior, conv_trunk, gan_training_start


# ------------------------------------------------------------------------------------------------ losses
def soft_cross_entropy(logits: Tensor, target_logits: Tensor) -> Tensor:
    """KEDMI's ``softXEnt``: cross-entropy of ``logits`` to the soft labels ``softmax(target_logits)``,
    summed over classes, averaged over the batch."""
    return -(F.softmax(target_logits, dim=1) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def unsupervised_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The real/fake half of the K+1 discriminator loss, with ``D = sigmoid(logsumexp l)``:
    ``0.5 * (-log D(x_real) - log(1 - D(x_fake)))`` averaged over each batch."""
    lse_r, lse_f = torch.logsumexp(real_logits, 1), torch.logsumexp(fake_logits, 1)
    return 0.5 * (F.softplus(lse_r).mean() - lse_r.mean() + F.softplus(lse_f).mean())


def feature_matching_loss(real_features: Tensor, fake_features: Tensor) -> Tensor:
    """KEDMI's generator loss: mean absolute difference of the batch-mean discriminator features."""
    return (fake_features.flatten(1).mean(0) - real_features.flatten(1).mean(0)).abs().mean()


def batch_entropy(logits: Tensor) -> Tensor:
    """KEDMI's ``HLoss``: the entropy of ``softmax(logits)``, summed over the batch (not averaged)."""
    return -(F.softmax(logits, 1) * F.log_softmax(logits, 1)).sum()


def realness(logits: Tensor) -> Tensor:
    """``log D(x) = logsigmoid(logsumexp l(x))`` per sample: minus KEDMI's attack prior loss."""
    return F.logsigmoid(torch.logsumexp(logits, 1))


# ---------------------------------------------------------------------------------------------- networks
class InstanceNorm(nn.InstanceNorm2d):
    """``InstanceNorm2d(affine=True)`` as in KEDMI's discriminator; a 1x1 map (tiny images) has nothing to
    normalise over and passes through unchanged."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] * x.shape[-2] == 1:
            return x
        return super().forward(x)


class MinibatchDiscrimination(nn.Module):
    """Minibatch discrimination (Salimans et al. 2016): ``B`` kernels of dimension ``C`` project each
    sample; ``o_b(x_i) = sum_{j != i} exp(-||M_i,b - M_j,b||_1)`` is appended to the features."""

    def __init__(self, in_features: int, kernels: int, kernel_dims: int) -> None:
        super().__init__()
        self.kernels, self.kernel_dims = kernels, kernel_dims
        self.T = nn.Parameter(torch.randn(in_features, kernels * kernel_dims))  # N(0, 1) as in KEDMI

    def forward(self, x: Tensor) -> Tensor:
        m = (x @ self.T).view(-1, self.kernels, self.kernel_dims).transpose(0, 1)  # (B, N, C)
        dist = torch.cdist(m, m, p=1)  # (B, N, N) L1 distances between the samples, per kernel
        o = torch.exp(-dist).sum(2).t() - 1  # (N, B), minus the sample's own term exp(0)
        return torch.cat([x, o], 1)


def discriminator_stages(image_shape: tuple[int, int, int]) -> int:
    """Strided stages of KEDMI's discriminator body: as in the official ``MinibatchDiscriminator`` (64 px CelebA,
    4 stages) and ``MinibatchDiscriminator_MNIST`` (32 px, 3 stages), the body stops at a 4x4 map (3x3 at 28 px),
    so the feature-matching features keep their spatial layout; at least 2 stages for tiny images."""
    side = max(image_shape[1:])
    return max(2, math.ceil(math.log2(max(side, 8) / 4)))


class KPlusOneDiscriminator(nn.Module):
    """KEDMI's discriminator: the DCGAN critic body with InstanceNorm, minibatch discrimination, K logits
    (the (K+1)-th, fake, is the constant 0). ``forward`` returns ``(features, logits)``."""

    def __init__(self, image_shape: tuple[int, int, int], width: int, num_classes: int,
                 mb_kernels: int, mb_kernel_dims: int) -> None:
        super().__init__()
        self.body, flat = conv_trunk(image_shape, width, norm=InstanceNorm, stages=discriminator_stages(image_shape))
        self.mbd = MinibatchDiscrimination(flat, mb_kernels, mb_kernel_dims) if mb_kernels > 0 else None
        self.head = nn.Linear(flat + (mb_kernels if mb_kernels > 0 else 0), num_classes)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feat = self.body(x)
        return feat, self.head(self.mbd(feat) if self.mbd is not None else feat)


# ------------------------------------------------------------------------------------------------- prior
class KEDMIPrior(GeneratorPrior):
    """KEDMI's generator with its K+1 discriminator; ``realism = log D(x)`` (see the module docstring)."""

    name = "kedmi-gan"
    has_discriminator = True

    def __init__(self, generator: Generator, discriminator: KPlusOneDiscriminator, latent_dim: int) -> None:
        super().__init__(generator, discriminator, latent_dim)
        self.discriminator = discriminator
        self.num_classes = discriminator.num_classes

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.generator(self.check_latent(z))

    def realism(self, x: Tensor) -> Tensor:
        return realness(self.discriminator(x)[1])

    def class_logits(self, x: Tensor) -> Tensor:
        """The discriminator's K class logits (its estimate of the target's soft labels)."""
        return self.discriminator(x)[1]


class KEDMIGANBuilder(PriorBuilder):
    name = "kedmi-gan"
    layered = True  # its generator decodes block by block (decode_to / decode_from)
    summary = "KEDMI's inversion-specific GAN: K+1 semi-supervised discriminator on the target's soft labels, feature matching."
    paper = "https://arxiv.org/abs/2010.04092"
    needs_target = True
    target_requires = frozenset({Capability.PROBS})
    provides = frozenset({PriorFeature.DISCRIMINATOR})

    class Config(ComponentConfig):
        num_classes: int | None = Field(None, ge=2, description="K, the target's number of classes (the discriminator's class logits); required")
        latent_dim: int = Field(100, ge=2, description="latent size (KEDMI: 100)")
        width: int = Field(64, ge=4, description="channels of the last generator stage / first discriminator stage (KEDMI: 64)")
        epochs: int = Field(120, ge=1, description="passes over the public set, one discriminator step per batch (KEDMI: 120)")
        n_dis: int = Field(5, ge=1, description="discriminator steps per generator step (KEDMI's n_critic: 5)")
        batch_size: int = Field(64, ge=2, description="batch size (KEDMI: 64)")
        lr: float = Field(2e-4, gt=0, description="Adam learning rate of both networks (KEDMI: 2e-4)")
        beta1: float = Field(0.5, ge=0, lt=1, description="Adam beta1 (KEDMI: 0.5)")
        beta2: float = Field(0.999, ge=0, lt=1, description="Adam beta2 (KEDMI: 0.999)")
        entropy_weight: float = Field(1e-4, ge=0, description="weight of the generated batch's summed class entropy in the generator loss (KEDMI: 1e-4)")
        mb_kernels: int = Field(64, ge=0, description="minibatch-discrimination kernels B; 0 disables the layer (KEDMI: 64)")
        mb_kernel_dims: int = Field(50, ge=1, description="minibatch-discrimination kernel dimension C (KEDMI: 50)")

    def _classes(self) -> int:
        return target_classes(self)

    def networks(self, image_shape: tuple[int, int, int]) -> dict[str, nn.Module]:
        cfg = self.config
        return {
            "generator": Generator(image_shape, cfg.latent_dim, cfg.width),
            "discriminator": KPlusOneDiscriminator(image_shape, cfg.width, self._classes(), cfg.mb_kernels, cfg.mb_kernel_dims),
        }

    def train(self, nets: dict[str, nn.Module], public_images: Tensor, *, seed: int, progress=None,  # noqa: ANN001
              target=None) -> dict:  # noqa: ANN001 - a TargetModel (the attacker's view)
        cfg = self.config
        if target is None:
            raise ConfigError("prior 'kedmi-gan' is trained with the target's soft labels: train() needs target=")
        G, D = nets["generator"], nets["discriminator"]
        x_all = public_images
        n = len(x_all)
        if n < 2:
            raise ShapeError(f"prior 'kedmi-gan' needs at least 2 public images, got {n}")
        soft = target_log_probs(target, x_all)
        if soft.shape[1] != self._classes():
            raise ConfigError(f"prior 'kedmi-gan': num_classes is {self._classes()} but the target has {soft.shape[1]} outputs")
        g, opt_g, opt_d = gan_training_start(G, D, cfg, seed)
        bs = min(cfg.batch_size, n)
        batches = max(1, n // bs)
        t0 = time.perf_counter()
        step = 0
        loss_lab = loss_unlab = loss_g = agree = float("nan")
        for epoch in range(cfg.epochs):
            perm_lab, perm_u1, perm_u2 = (torch.randperm(n, generator=g) for _ in range(3))
            for b in range(batches):
                sl = slice(b * bs, (b + 1) * bs)
                idx = perm_lab[sl]
                x_lab, t_lab = x_all[idx], soft[idx]
                x_u1, x_u2 = x_all[perm_u1[sl]], x_all[perm_u2[sl]]
                step += 1
                # ---- discriminator
                z = torch.randn(len(idx), cfg.latent_dim, generator=g)
                with torch.no_grad():
                    fake = G(z)
                _, out_lab = D(x_lab)
                _, out_u = D(x_u1)
                _, out_f = D(fake)
                l_lab = soft_cross_entropy(out_lab, t_lab)
                l_unlab = unsupervised_loss(out_u, out_f)
                opt_d.zero_grad(set_to_none=True)
                (l_lab + l_unlab).backward()
                opt_d.step()
                loss_lab, loss_unlab = float(l_lab.detach()), float(l_unlab.detach())
                agree = float((out_lab.argmax(1) == t_lab.argmax(1)).float().mean())
                # ---- generator: feature matching (+ entropy), every n_dis discriminator steps
                if step % cfg.n_dis == 0:
                    D.requires_grad_(False)
                    z = torch.randn(len(idx), cfg.latent_dim, generator=g)
                    f_fake, out_fake = D(G(z))
                    with torch.no_grad():
                        f_real, _ = D(x_u2)
                    lg = feature_matching_loss(f_real, f_fake) + cfg.entropy_weight * batch_entropy(out_fake)
                    opt_g.zero_grad(set_to_none=True)
                    lg.backward()
                    opt_g.step()
                    D.requires_grad_(True)
                    loss_g = float(lg.detach())
            if progress is not None:
                progress(epoch + 1, cfg.epochs, loss_g)
        G.eval()
        D.eval()
        return {"seconds": time.perf_counter() - t0, "epochs": cfg.epochs, "discriminator_steps": step,
                "loss_labelled": loss_lab, "loss_unlabelled": loss_unlab, "loss_generator": loss_g,
                "discriminator_target_agreement": agree}

    def wrap(self, nets: dict[str, nn.Module]) -> Prior:
        return KEDMIPrior(nets["generator"], nets["discriminator"], self.config.latent_dim)  # type: ignore[arg-type]


def target_classes(builder: PriorBuilder) -> int:
    """K, the ``num_classes`` option of a prior trained on the target's classes (required: no default)."""
    k = builder.config.num_classes
    if k is None:
        raise ConfigError(f"prior '{builder.name}' needs num_classes (the target's number of classes) in its options")
    return k


def target_log_probs(target, images: Tensor, batch_size: int = 512) -> Tensor:  # noqa: ANN001
    """The target's log-confidences on ``images`` (one query each, through its public API), detached, on
    the CPU: soft labels ``softmax`` of them, or logits up to a per-row constant."""
    with torch.no_grad():
        out = [target.log_probs(images[i : i + batch_size].to(target.device)).detach().float().cpu()
               for i in range(0, len(images), batch_size)]
    return torch.cat(out)


@hookimpl
def invertkit_register_priors(register) -> None:  # noqa: ANN001
    register(KEDMIGANBuilder)
