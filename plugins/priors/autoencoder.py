"""A convolutional autoencoder prior (Hinton & Salakhutdinov, Science 2006, https://doi.org/10.1126/science.1127647).

The encoder is the DCGAN critic body (``wgan_gp.Critic`` with a ``latent_dim``-wide output), the decoder the
DCGAN generator (``wgan_gp.Generator``, sigmoid output in ``[0, 1]``), both sized to the image; trained on the
public split to reconstruct it (mean squared error or per-pixel binary cross-entropy), Adam(lr 1e-3) with a
cosine schedule and batch 64. The prior's latent space is the bottleneck; ``sample_latent`` draws from a
diagonal Gaussian fitted to the encoded public images (mean and standard deviation per dimension, stored with
the weights), so the ``random-prior`` baseline and latent-space attacks start from plausible codes. There is
no discriminator.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import ShapeError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.prior import Prior, PriorBuilder
from invertkit.core.zoo.train import augment, seed_everything
from invertkit.plugins.priors.wgan_gp import Critic, Generator, freeze


class LatentStats(nn.Module):
    """Per-dimension mean and standard deviation of the encoded public images (buffers, saved with the prior)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(latent_dim))
        self.register_buffer("std", torch.ones(latent_dim))

    @torch.no_grad()
    def fit(self, codes: Tensor) -> None:
        self.mean.copy_(codes.mean(0))
        self.std.copy_(codes.std(0, unbiased=False).clamp_min(1e-6))


class AutoencoderPrior(Prior):
    name = "autoencoder"
    has_discriminator = False

    def __init__(self, encoder: Critic, decoder: Generator, stats: LatentStats, latent_dim: int) -> None:
        freeze(encoder, decoder, stats)
        self.encoder, self.decoder, self.stats = encoder, decoder, stats
        self.latent_shape = (latent_dim,)
        self.image_shape = decoder.image_shape  # type: ignore[assignment]

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_shape[0]:
            raise ShapeError(f"prior '{self.name}' decodes latents of shape (N, {self.latent_shape[0]}), got {tuple(z.shape)}")
        return self.decoder(z)

    def encode(self, x: Tensor) -> Tensor:
        """The bottleneck code of images ``x`` (e.g. to start a search from public images)."""
        if tuple(x.shape[1:]) != tuple(self.image_shape):
            raise ShapeError(f"prior '{self.name}' encodes images of shape (N, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}")
        return self.encoder(x)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn((n, *self.latent_shape), generator=generator)
        return (self.stats.mean.cpu() + self.stats.std.cpu() * eps).to(self.device)


class AutoencoderBuilder(PriorBuilder):
    name = "autoencoder"
    summary = "Convolutional autoencoder on the public split; latent = bottleneck, sampled from a Gaussian fit to public codes."
    paper = "https://doi.org/10.1126/science.1127647"

    class Config(ComponentConfig):
        latent_dim: int = Field(64, ge=2, description="bottleneck size")
        width: int = Field(64, ge=4, description="channels of the first encoder / last decoder stage")
        epochs: int = Field(60, ge=1, description="passes over the public set")
        batch_size: int = Field(64, ge=2)
        lr: float = Field(1e-3, gt=0, description="Adam learning rate (cosine schedule)")
        weight_decay: float = Field(0.0, ge=0)
        loss: Literal["mse", "bce"] = Field("mse", description="reconstruction loss: mean squared error or per-pixel BCE")
        max_shift: int = Field(1, ge=0, description="random-shift augmentation of the inputs (pixels)")

    def networks(self, image_shape: tuple[int, int, int]) -> dict[str, nn.Module]:
        cfg = self.config
        return {
            "encoder": Critic(image_shape, cfg.width, outputs=cfg.latent_dim),
            "decoder": Generator(image_shape, cfg.latent_dim, cfg.width),
            "stats": LatentStats(cfg.latent_dim),
        }

    def train(self, nets: dict[str, nn.Module], public_images: Tensor, *, seed: int, progress=None,  # noqa: ANN001
              target: nn.Module | None = None) -> dict:
        cfg = self.config
        enc, dec, stats = nets["encoder"], nets["decoder"], nets["stats"]
        x_all = public_images
        n = len(x_all)
        if n < 2:
            raise ShapeError(f"prior 'autoencoder' needs at least 2 public images, got {n}")
        g = seed_everything(seed)
        params = [*enc.parameters(), *dec.parameters()]
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        bs = min(cfg.batch_size, n)
        steps = cfg.epochs * max(1, n // bs)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        enc.train()
        dec.train()
        t0 = time.perf_counter()
        loss = float("nan")
        for epoch in range(cfg.epochs):
            perm = torch.randperm(n, generator=g)
            for b in range(max(1, n // bs)):
                x = augment(x_all[perm[b * bs : (b + 1) * bs]], g, cfg.max_shift)
                rec = dec(enc(x))
                lo = F.mse_loss(rec, x) if cfg.loss == "mse" else F.binary_cross_entropy(rec, x)
                opt.zero_grad(set_to_none=True)
                lo.backward()
                opt.step()
                sched.step()
                loss = float(lo.detach())
            if progress is not None:
                progress(epoch + 1, cfg.epochs, loss)
        enc.eval()
        dec.eval()
        with torch.no_grad():
            codes = torch.cat([enc(x_all[i : i + 512]) for i in range(0, n, 512)])
            stats.fit(codes)
            rec = torch.cat([dec(codes[i : i + 512]) for i in range(0, n, 512)])
            mse = float(F.mse_loss(rec, x_all))
        return {"seconds": time.perf_counter() - t0, "epochs": cfg.epochs, "train_loss": loss,
                "public_reconstruction_mse": mse, "public_reconstruction_psnr": -10 * math.log10(max(mse, 1e-12))}

    def wrap(self, nets: dict[str, nn.Module]) -> Prior:
        return AutoencoderPrior(nets["encoder"], nets["decoder"], nets["stats"], self.config.latent_dim)  # type: ignore[arg-type]


@hookimpl
def invertkit_register_priors(register) -> None:  # noqa: ANN001
    register(AutoencoderBuilder)
