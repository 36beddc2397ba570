"""``Prior``: a generative image prior an attack searches in (GAN, conditional GAN, autoencoder, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from invertkit.core.errors import CapabilityError, UsageError
from invertkit.core.interfaces.capability import PriorFeature, PriorFeatures


def features_of(prior: object) -> PriorFeatures:
    """The :class:`~invertkit.core.interfaces.capability.PriorFeature` set a prior (an instance) provides, read
    from what it declares: ``conditional``, ``num_blocks > 0`` (layered), ``has_style_space``,
    ``has_discriminator``. Works for any object with those attributes (missing ones count as absent)."""
    have = {
        PriorFeature.CONDITIONAL: bool(getattr(prior, "conditional", False)),
        PriorFeature.LAYERED: int(getattr(prior, "num_blocks", 0) or 0) > 0,
        PriorFeature.STYLE_SPACE: bool(getattr(prior, "has_style_space", False)),
        PriorFeature.DISCRIMINATOR: bool(getattr(prior, "has_discriminator", False)),
    }
    return frozenset(f for f, on in have.items() if on)


class Prior(ABC):
    """A decoder from a latent space to images in ``[0, 1]`` of ``image_shape``, trained on public data.

    ``decode`` must be differentiable in ``z``. ``realism`` (a discriminator/critic score, higher is more
    realistic) is optional: ``has_discriminator`` says whether it exists. :attr:`features` is the set of
    :class:`~invertkit.core.interfaces.capability.PriorFeature` the prior provides, derived from those
    declarations; ``Attack.check`` compares it with the attack's ``prior_requires``.
    """

    name: ClassVar[str] = "prior"
    has_discriminator: ClassVar[bool] = False
    #: a conditional prior decodes ``(z, labels)``: labels are the *target's* class indices (PLG-MI's
    #: pseudo-labelled cGAN); an unconditional one ignores ``labels``
    conditional: ClassVar[bool] = False

    latent_shape: tuple[int, ...]
    image_shape: tuple[int, int, int]

    @property
    def features(self) -> PriorFeatures:
        """What this prior provides (conditional, layered, style-space, discriminator): see :func:`features_of`."""
        return features_of(self)

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

    # ------------------------------------------------------------------ layered decoding (IF-GMI) ----
    # Optional. A prior whose decoder is a stack of blocks (a GAN generator: a stem that reads the latent,
    # then convolutional stages) may expose the feature maps between them, so that an attack can optimise an
    # intermediate representation instead of the latent (IF-GMI, Qiu et al., ECCV 2024,
    # https://arxiv.org/abs/2407.13863). ``num_blocks`` counts those feature maps: block ``k`` (``0 <= k <
    # num_blocks``, block 0 the stem) ends where feature map ``k`` is produced; the image follows the last.
    # Contract: ``decode_from(decode_to(z, k, y), k, y) == decode(z, y)`` and, for ``k < j``,
    # ``decode_from(decode_to(z, k, y), k, y, to=j) == decode_to(z, j, y)``; both differentiable. The default,
    # 0, means the prior is not layered: both methods raise CapabilityError.
    num_blocks: int = 0

    def decode_to(self, z: Tensor, k: int, labels: Tensor | None = None) -> Tensor:
        """The decoder's features after block ``k`` for latents ``z``."""
        raise CapabilityError(self._not_layered())

    def decode_from(self, h: Tensor, k: int, labels: Tensor | None = None, *, to: int | None = None) -> Tensor:
        """Go on decoding from features ``h`` after block ``k``: the image, or with ``to=j`` the features after
        block ``j > k``."""
        raise CapabilityError(self._not_layered())

    def check_block(self, k: int, to: int | None = None) -> None:
        """Raise CapabilityError if the prior is not layered, UsageError if ``k`` (or ``to``) is out of range."""
        n = int(self.num_blocks)
        if n < 1:
            raise CapabilityError(self._not_layered())
        if not 0 <= int(k) < n:
            raise UsageError(f"prior '{self.name}' has blocks 0..{n - 1}, got block {k}")
        if to is not None and not int(k) < int(to) < n:
            raise UsageError(f"prior '{self.name}': decoding from block {k} to block {to} needs {k} < to <= {n - 1}")

    def _not_layered(self) -> str:
        return (f"prior '{self.name}' has no layered decoding (decode_to/decode_from between generator blocks), "
                "which IF-GMI needs: use a GAN prior such as 'wgan-gp', 'kedmi-gan' or 'plg-cgan'")
    # -------------------------------------------------------------- end of layered decoding (IF-GMI) ----

    # ------------------------------------------------------------------------ style space (PPA) ----
    # Optional. A style-based prior (StyleGAN) maps a latent ``z`` to a style vector ``w`` (the mapping
    # network) and synthesises the image from ``w``; Plug & Play Attacks (Struppek et al., ICML 2022,
    # https://arxiv.org/abs/2201.12179) optimise ``w`` rather than ``z``. ``style_shape`` is the shape of one
    # style vector; ``num_styles`` how many the synthesis reads (StyleGAN's ``num_ws``, one per layer).
    # ``decode_style`` takes ``(N, *style_shape)`` (one vector broadcast to every layer, as PPA optimises) or
    # ``(N, num_styles, *style_shape)`` (one per layer). ``style_mean`` is the centre of the truncation trick
    # (``None``: the prior has none, truncation is the identity). Defaults: the latent space IS the style space
    # (identity mapping, one style, ``decode_style = decode``, ``project_style = project``), so every prior
    # works with a style-space attack unchanged.
    has_style_space: ClassVar[bool] = False

    @property
    def style_shape(self) -> tuple[int, ...]:
        return tuple(self.latent_shape)

    @property
    def num_styles(self) -> int:
        return 1

    def to_style(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """The mapping network ``z -> w`` (``(N, *latent_shape) -> (N, *style_shape)``); identity by default."""
        return z

    def style_mean(self) -> Tensor | None:
        """The mean style vector (StyleGAN's ``w_avg``), the truncation centre; ``None`` by default."""
        return None

    def truncate_style(self, w: Tensor, psi: float = 1.0) -> Tensor:
        """The truncation trick ``w_avg + psi * (w - w_avg)``; the identity when ``psi == 1`` or there is no mean."""
        mean = self.style_mean()
        if mean is None or float(psi) == 1.0:
            return w
        mean = mean.to(device=w.device, dtype=w.dtype).reshape(self.style_shape)
        return mean + float(psi) * (w - mean)

    def decode_style(self, w: Tensor, labels: Tensor | None = None) -> Tensor:
        """Images from style vectors (differentiable in ``w``); by default ``decode`` of the latent ``w``."""
        if w.dim() == len(self.style_shape) + 2 and self.num_styles == 1:
            w = w.squeeze(1)  # the per-layer form of a single-style prior
        return self.decode(w, labels)

    def project_style(self, w: Tensor) -> Tensor:
        """Map a style vector back onto the prior's support after a step; ``project`` by default (the latent is
        the style), the identity for a prior with its own style space."""
        return w if self.has_style_space else self.project(w)
    # -------------------------------------------------------------------- end of style space (PPA) ----


if TYPE_CHECKING:  # pragma: no cover
    from invertkit.core.interfaces.target import TargetModel


class _BuilderFeatures:
    """``PriorBuilder.features``, on the class as on an instance: derived from the builder's declarations."""

    def __get__(self, obj: object, owner: type) -> PriorFeatures:
        have = set(getattr(owner, "provides", frozenset()))
        if getattr(owner, "conditional", False):
            have.add(PriorFeature.CONDITIONAL)
        if getattr(owner, "layered", False):
            have.add(PriorFeature.LAYERED)
        return frozenset(have)


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
    #: receives ``target``, the attacker's :class:`~invertkit.core.interfaces.access.TargetView` of the target
    #: *as defended* in the cell; every query it makes is counted in the cell's queries, and the prior is
    #: cached per (target, defense)
    needs_target: ClassVar[bool] = False
    #: what such a prior needs of the defended target (checked by the plan like an attack's ``requires``)
    target_requires: ClassVar[frozenset] = frozenset()
    #: True if the wrapped prior decodes in blocks (``Prior.num_blocks > 0``; IF-GMI needs it)
    layered: ClassVar[bool] = False
    #: further features the wrapped prior provides (``PriorFeature.DISCRIMINATOR``, ``STYLE_SPACE``), for the plan
    provides: ClassVar[PriorFeatures] = frozenset()
    #: the :class:`~invertkit.core.interfaces.capability.PriorFeature` set of the wrapped prior, known before
    #: it is built: ``conditional`` and ``layered`` as declared, plus ``provides``. The bench plan skips an
    #: attack whose ``prior_requires`` it does not cover, with the reason
    features = _BuilderFeatures()

    @abstractmethod
    def train(self, nets: dict[str, "torch.nn.Module"], public_images: Tensor, *, seed: int, progress=None,  # noqa: ANN001
              target: "TargetModel | None" = None) -> dict:
        """Train ``nets`` in place on public images; return a small dict of facts (seconds, losses)."""

    @abstractmethod
    def wrap(self, nets: dict[str, "torch.nn.Module"]) -> Prior:
        """The :class:`Prior` over trained networks."""
