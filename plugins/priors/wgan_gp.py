"""WGAN-GP DCGAN prior, as GMI trains it (Zhang et al., CVPR 2020, https://arxiv.org/abs/1911.07135).

GMI's prior is a DCGAN-style generator with a WGAN-GP critic (Gulrajani et al. 2017,
https://arxiv.org/abs/1704.00028) trained on the public split: Adam(lr 2e-4, betas (0.5, 0.999)),
5 critic steps per generator step, gradient-penalty weight 10. Here the DCGAN is sized to the image:
transposed-conv stages double the resolution from 2x2 up to the next power of two (64x64 for CelebA, 8x8
for digits), resized to the exact size when it is not a power of two (28x28 MNIST).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import ShapeError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.capability import PriorFeature
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.prior import Prior, PriorBuilder
from invertkit.core.zoo.train import seed_everything


def _stages(size: int) -> int:
    return max(1, math.ceil(math.log2(max(size, 4) / 2)))


class Generator(nn.Module):
    """DCGAN generator sized to ``image_shape``, sigmoid output in ``[0, 1]``.

    ``norm(channels)`` makes the 2-D normalisation layers (default ``nn.BatchNorm2d``); a layer with a true
    ``takes_labels`` attribute is called as ``layer(x, labels)`` (conditional BatchNorm, PLG-MI's cGAN).
    """

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, width: int,
                 norm: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.image_shape = tuple(image_shape)
        c, h, w = image_shape
        n = _stages(max(h, w))
        ch = width * 2 ** (n - 1)
        self.fc = nn.Sequential(nn.Linear(latent_dim, ch * 4), nn.BatchNorm1d(ch * 4), nn.ReLU(True))
        layers: list[nn.Module] = []
        for i in range(n):
            out = c if i == n - 1 else ch // 2
            layers.append(nn.ConvTranspose2d(ch, out, 4, 2, 1))
            if i < n - 1:
                layers += [norm(out), nn.ReLU(True)]
            ch = out
        self.net = nn.Sequential(*layers)
        self.start_ch = width * 2 ** (n - 1)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        x = self.fc(z).view(z.shape[0], self.start_ch, 2, 2)
        for layer in self.net:
            x = layer(x, labels) if getattr(layer, "takes_labels", False) else layer(x)
        if tuple(x.shape[2:]) != self.image_shape[1:]:
            x = F.interpolate(x, size=self.image_shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(x)

    # ---- layered decoding (IF-GMI): block 0 is the stem (fc, reshaped to 2x2), block k >= 1 the k-th
    # transposed-conv stage with its norm and ReLU; the last stage (to the image channels) is no block
    def block_ends(self) -> list[int]:
        """Index into ``self.net`` after which block ``k`` ends (0 for the stem)."""
        return [0] + [i + 1 for i, layer in enumerate(self.net) if isinstance(layer, nn.ReLU)]

    def block_shape(self, k: int) -> tuple[int, int, int]:
        """``(C, H, W)`` of the features after block ``k``."""
        if k == 0:
            return (self.start_ch, 2, 2)
        convs = [m for m in list(self.net)[: self.block_ends()[k]] if isinstance(m, nn.ConvTranspose2d)]
        side = 2 ** (k + 1)
        return (convs[-1].out_channels, side, side)

    def _layers(self, x: Tensor, start: int, stop: int, labels: Tensor | None) -> Tensor:
        for layer in list(self.net)[start:stop]:
            x = layer(x, labels) if getattr(layer, "takes_labels", False) else layer(x)
        return x

    def forward_to(self, z: Tensor, k: int, labels: Tensor | None = None) -> Tensor:
        """The features after block ``k`` (the layers of :meth:`forward` up to there)."""
        x = self.fc(z).view(z.shape[0], self.start_ch, 2, 2)
        return self._layers(x, 0, self.block_ends()[k], labels)

    def forward_from(self, h: Tensor, k: int, labels: Tensor | None = None, to: int | None = None) -> Tensor:
        """From features ``h`` after block ``k``: the image (as :meth:`forward`), or the features after block ``to``."""
        want = self.block_shape(k)
        if h.dim() != 4 or tuple(h.shape[1:]) != want:
            raise ShapeError(f"features after generator block {k} have shape (N, {', '.join(map(str, want))}), "
                             f"got {tuple(h.shape)}")
        ends = self.block_ends()
        if to is not None:
            return self._layers(h, ends[k], ends[to], labels)
        x = self._layers(h, ends[k], len(self.net), labels)
        if tuple(x.shape[2:]) != self.image_shape[1:]:
            x = F.interpolate(x, size=self.image_shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


def conv_trunk(image_shape: tuple[int, int, int], width: int,
               norm: Callable[[int], nn.Module] | None = None, stages: int | None = None,
               spectral: bool = False) -> tuple[nn.Sequential, int]:
    """The critic's body: strided 4x4 convs (``width`` channels, doubling per stage) + LeakyReLU(0.2), each
    halving the resolution, then ``Flatten``; ``norm(channels)``, when given, follows every conv (KEDMI's
    discriminator uses InstanceNorm). ``stages`` (default: down to a 2x2 map) sets the number of convs.
    ``spectral``: every conv spectrally normalised (the PLG-MI and LOKT discriminators). Returns the body and its
    flat feature size."""
    c, h, w = image_shape
    n = _stages(max(h, w)) if stages is None else int(stages)
    layers: list[nn.Module] = []
    ch_in, ch = c, width
    for _ in range(n):
        layers.append(nn.Conv2d(ch_in, ch, 4, 2, 1))
        if norm is not None:
            layers.append(norm(ch))
        layers.append(nn.LeakyReLU(0.2, True))
        ch_in, ch = ch, ch * 2
    body = nn.Sequential(*layers, nn.Flatten())
    with torch.no_grad():
        flat = body.eval()(torch.zeros(1, c, h, w)).shape[1]
    if spectral:
        from torch.nn.utils.parametrizations import spectral_norm

        for m in body:
            if isinstance(m, nn.Conv2d):
                spectral_norm(m)
    return body.train(), flat


class Critic(nn.Module):
    """WGAN-GP critic: no BatchNorm (the penalty is per sample); LayerNorm-free strided convs + LeakyReLU.

    ``outputs > 1`` makes it a convolutional encoder to a vector (the autoencoder prior's encoder).
    """

    def __init__(self, image_shape: tuple[int, int, int], width: int, outputs: int = 1):
        super().__init__()
        self.net, flat = conv_trunk(image_shape, width)
        self.out = nn.Linear(flat, outputs)

    def forward(self, x: Tensor) -> Tensor:
        y = self.out(self.net(x))
        return y.squeeze(1) if y.shape[1] == 1 else y


class LayeredDecoding:
    """Layered decoding (IF-GMI, see ``Prior.num_blocks``) for a prior whose ``self.generator`` is a
    :class:`Generator`; shared by the wgan-gp, kedmi-gan and plg-cgan priors. A conditional prior overrides
    :meth:`_block_labels` (its conditional BatchNorms read the labels)."""

    generator: Generator
    latent_shape: tuple[int, ...]
    name: str

    @property
    def num_blocks(self) -> int:
        return len(self.generator.block_ends())

    def _block_labels(self, n: int, labels: Tensor | None) -> Tensor | None:
        return None

    def check_latent(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_shape[0]:
            raise ShapeError(f"prior '{self.name}' decodes latents of shape (N, {self.latent_shape[0]}), got {tuple(z.shape)}")
        return z

    def decode_to(self, z: Tensor, k: int, labels: Tensor | None = None) -> Tensor:
        self.check_block(k)  # type: ignore[attr-defined]
        return self.generator.forward_to(self.check_latent(z), k, self._block_labels(len(z), labels))

    def decode_from(self, h: Tensor, k: int, labels: Tensor | None = None, *, to: int | None = None) -> Tensor:
        self.check_block(k, to)  # type: ignore[attr-defined]
        return self.generator.forward_from(h, k, self._block_labels(len(h), labels), to=to)


def freeze(*nets: nn.Module) -> None:
    """Eval mode, no gradients and none left over: a prior's networks as an attack's backward pass must find
    them (it must not train them)."""
    for net in nets:
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
            p.grad = None


def gan_training_start(G: nn.Module, D: nn.Module, cfg: ComponentConfig,  # noqa: N803 - G and D as the papers
                       seed: int) -> tuple[torch.Generator, torch.optim.Optimizer, torch.optim.Optimizer]:
    """What a GAN prior's training starts with (wgan-gp, kedmi-gan, plg-cgan): the random generator (and the
    global one) seeded ``seed``, both networks in train mode, and an Adam optimiser for each with the config's
    ``lr``, ``beta1`` and ``beta2``. Returns ``(generator, opt_g, opt_d)``."""
    g = seed_everything(seed)
    G.train()
    D.train()
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    return g, opt_g, opt_d


class GeneratorPrior(LayeredDecoding, Prior):
    """What the priors over a trained :class:`Generator` share (wgan-gp, kedmi-gan, plg-cgan): the generator and
    its critic or discriminator frozen in eval mode (an attack's backward pass must not train them), the latent
    and image shapes, the device."""

    def __init__(self, generator: Generator, scorer: nn.Module, latent_dim: int) -> None:
        freeze(generator, scorer)
        self.generator = generator
        self.latent_shape = (latent_dim,)
        self.image_shape = generator.image_shape  # type: ignore[assignment]

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device


class GANPrior(GeneratorPrior):
    """A generator decoding ``z ~ N(0, I)`` with a critic whose score is the prior's realism."""

    name = "wgan-gp"
    has_discriminator = True

    def __init__(self, generator: Generator, critic: Critic, latent_dim: int):
        super().__init__(generator, critic, latent_dim)
        self.critic = critic

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.generator(z)

    def realism(self, x: Tensor) -> Tensor:
        return self.critic(x)


class WGANGPBuilder(PriorBuilder):
    name = "wgan-gp"
    layered = True  # its generator decodes block by block (decode_to / decode_from)
    summary = "DCGAN generator + WGAN-GP critic trained on the public split (GMI's prior)."
    paper = "https://arxiv.org/abs/1911.07135"
    provides = frozenset({PriorFeature.DISCRIMINATOR})

    class Config(ComponentConfig):
        latent_dim: int = Field(100, ge=2, description="latent size (GMI: 100)")
        width: int = Field(64, ge=4, description="channels of the last generator stage / first critic stage")
        steps: int = Field(2000, ge=1, description="generator steps")
        n_critic: int = Field(5, ge=1, description="critic steps per generator step")
        batch_size: int = Field(64, ge=2)
        lr: float = Field(2e-4, gt=0)
        beta1: float = Field(0.5, ge=0, lt=1)
        beta2: float = Field(0.999, ge=0, lt=1)
        gp_weight: float = Field(10.0, ge=0, description="gradient-penalty weight")

    def networks(self, image_shape: tuple[int, int, int]) -> dict[str, nn.Module]:
        cfg = self.config
        return {
            "generator": Generator(image_shape, cfg.latent_dim, cfg.width),
            "critic": Critic(image_shape, cfg.width),
        }

    def train(self, nets: dict[str, nn.Module], public_images: Tensor, *, seed: int, progress=None,  # noqa: ANN001
              target: nn.Module | None = None) -> dict:
        cfg = self.config
        G, D = nets["generator"], nets["critic"]
        g, opt_g, opt_d = gan_training_start(G, D, cfg, seed)
        x_all = public_images
        n = len(x_all)
        t0 = time.perf_counter()
        w_dist = float("nan")
        for step in range(cfg.steps):
            for _ in range(cfg.n_critic):
                real = x_all[torch.randint(0, n, (cfg.batch_size,), generator=g)]
                z = torch.randn(cfg.batch_size, cfg.latent_dim, generator=g)
                with torch.no_grad():
                    fake = G(z)
                eps = torch.rand(cfg.batch_size, 1, 1, 1, generator=g)
                mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
                grad = torch.autograd.grad(D(mix).sum(), mix, create_graph=True)[0]
                gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
                d_real, d_fake = D(real).mean(), D(fake).mean()
                loss_d = d_fake - d_real + cfg.gp_weight * gp
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
            z = torch.randn(cfg.batch_size, cfg.latent_dim, generator=g)
            loss_g = -D(G(z)).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            w_dist = float((d_real - d_fake).detach())
            if progress is not None and (step + 1) % 50 == 0:
                progress(step + 1, cfg.steps, w_dist)
        G.eval()
        D.eval()
        return {"seconds": time.perf_counter() - t0, "wasserstein_estimate": w_dist, "steps": cfg.steps}

    def wrap(self, nets: dict[str, nn.Module]) -> Prior:
        return GANPrior(nets["generator"], nets["critic"], self.config.latent_dim)  # type: ignore[arg-type]


@hookimpl
def invertkit_register_priors(register) -> None:
    register(WGANGPBuilder)
