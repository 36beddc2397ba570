"""``Prior``: a generative image prior an attack searches in (GAN, conditional GAN, autoencoder, ...)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from invertkit.core.errors import CapabilityError


class Prior(ABC):
    """A decoder from a latent space to images in ``[0, 1]`` of ``image_shape``, trained on public data.

    ``decode`` must be differentiable in ``z``. ``realism`` (a discriminator/critic score, higher is more
    realistic) is optional: ``has_discriminator`` says whether it exists.
    """

    name: ClassVar[str] = "prior"
    has_discriminator: ClassVar[bool] = False
    #: a conditional prior decodes ``(z, labels)``: labels are the *target's* class indices (PLG-MI's
    #: pseudo-labelled cGAN); an unconditional one ignores ``labels``
    conditional: ClassVar[bool] = False

    latent_shape: tuple[int, ...]
    image_shape: tuple[int, int, int]

    @abstractmethod
    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor: ...

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn((n, *self.latent_shape), generator=generator).to(self.device)

    def project(self, z: Tensor) -> Tensor:
        """Map a latent back onto the prior's support after an update step (identity by default)."""
        return z

    def realism(self, x: Tensor) -> Tensor:
        raise CapabilityError(f"prior '{self.name}' has no discriminator")

    def sample(self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None) -> Tensor:
        with torch.no_grad():
            return self.decode(self.sample_latent(n, generator), labels)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")


class PriorBuilder(ABC):
    """A prior plugin: how to make the networks of a prior, train them on public images, and wrap them.

    The scenario builder caches what :meth:`train` returns (safetensors, content-addressed by the config
    and the data), so a prior is trained once per machine.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""

    def __init__(self, config=None) -> None:  # noqa: ANN001 - a ComponentConfig or a dict
        from invertkit.core.interfaces.config import ComponentConfig, build_config

        cls = getattr(type(self), "Config", ComponentConfig)
        self.config = build_config(cls, config, what=f"prior '{self.name}'")

    @abstractmethod
    def networks(self, image_shape: tuple[int, int, int]) -> dict[str, "torch.nn.Module"]:
        """Fresh, untrained networks by name (e.g. ``{"generator": G, "critic": D}``)."""

    #: True if the prior this builder wraps is conditional (lets the bench plan skip attacks that need one)
    conditional: ClassVar[bool] = False
    #: True for inversion-specific priors trained with the target's outputs (KEDMI, PLG-MI): ``train`` then
    #: receives ``target`` (the trained target network) and the cache key covers the target
    needs_target: ClassVar[bool] = False

    @abstractmethod
    def train(self, nets: dict[str, "torch.nn.Module"], public_images: Tensor, *, seed: int, progress=None,  # noqa: ANN001
              target: "torch.nn.Module | None" = None) -> dict:
        """Train ``nets`` in place on public images; return a small dict of facts (seconds, losses)."""

    @abstractmethod
    def wrap(self, nets: dict[str, "torch.nn.Module"]) -> Prior:
        """The :class:`Prior` over trained networks."""
