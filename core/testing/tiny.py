"""A tiny :class:`~invertkit.core.interfaces.Prior` for tests: the attack contracts' default prior, and
small enough for any attack test that needs a generator."""

from __future__ import annotations

from math import prod

import torch
from torch import Tensor, nn

from invertkit.core.interfaces.prior import Prior

__all__ = ["TinyPrior"]


class TinyPrior(Prior):
    """A fixed random linear decoder + sigmoid: latent ``(latent_dim,)`` -> images in ``(0, 1)``."""

    name = "tiny-prior"

    def __init__(self, image_shape: tuple[int, int, int] = (1, 8, 8), latent_dim: int = 8, seed: int = 0) -> None:
        self.latent_shape = (int(latent_dim),)
        self.image_shape = tuple(int(s) for s in image_shape)  # type: ignore[assignment]
        g = torch.Generator().manual_seed(int(seed))
        self.decoder = nn.Linear(int(latent_dim), prod(self.image_shape))
        with torch.no_grad():
            self.decoder.weight.copy_(torch.randn(self.decoder.weight.shape, generator=g) / latent_dim**0.5)
            self.decoder.bias.zero_()
        self.decoder.requires_grad_(False)

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return torch.sigmoid(self.decoder(z)).view(-1, *self.image_shape)

