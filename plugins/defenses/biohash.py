"""``biohash``: BioHashing cancelable templates, Teoh, Ngo and Goh, "BioHashing: two factor authentication
featuring fingerprint data and tokenised random numbers" (Pattern Recognition 37(11), 2004,
https://doi.org/10.1016/j.patcog.2004.04.011).

For an embedding target (a face recogniser whose ``features()`` is the template), the released template is
not the feature vector ``f`` but its BioHash under a user/application key (the "token"):

1. the key seeds ``m`` random Gaussian vectors in R^d, orthonormalised (Gram-Schmidt, done as a QR
   decomposition): ``R = [r_1 .. r_m]`` with ``m <= d``;
2. ``s_i = <f, r_i>``;
3. ``b_i = 1 if s_i > t else 0`` with ``t = 0`` (the paper's threshold) or, with ``binarize = "median"``, the
   template's own median projection (exactly half the bits set).

Templates are compared by normalised Hamming distance (:func:`hamming`); a new key issues a new, unlinkable
template from the same face (cancelability). ``features()`` of the defended target returns the bits as
floats 0/1.

Threat models: with ``stolen_key = False`` the key is the defender's secret and the defended target refuses
to show it (``projection`` raises :class:`~invertkit.core.errors.CapabilityError`); with ``stolen_key = True``
(the *stolen-token* scenario of the BioHashing literature) the attacker holds it: ``projection`` returns
``R`` and an attack may use it (e.g. ``R @ (2b - 1)`` points along the hidden feature vector).

Capabilities: those given minus ``weights`` (the raw feature extractor) and ``grad`` (binarisation has no
useful gradient); ``logits``/``probs``/``topk``/``label`` pass through unchanged — template protection guards
the template only.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.errors import CapabilityError, ConfigError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.capability import Capabilities, Capability
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import Defense, DefenseContext
from invertkit.core.interfaces.target import Restricted, TargetModel

C = Capability


def biohash_projection(key: int, dim: int, bits: int) -> Tensor:
    """``(dim, bits)`` matrix with orthonormal columns, a deterministic function of ``key``."""
    if bits > dim:
        raise ConfigError(f"biohash: bits={bits} exceeds the template dimension {dim} (orthonormal vectors need "
                          f"bits <= {dim})")
    g = torch.Generator().manual_seed(int(key))
    gauss = torch.randn((dim, bits), generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(bits, dtype=torch.float64))


def biohash(features: Tensor, projection: Tensor, binarize: str = "zero") -> Tensor:
    """The BioHash bits (as floats 0/1) of ``features`` ``(N, d)`` under ``projection`` ``(d, m)``."""
    s = features.detach().reshape(len(features), -1).to(torch.float64) @ projection.to(features.device)
    t = s.median(dim=1, keepdim=True).values if binarize == "median" else torch.zeros_like(s[:, :1])
    return (s > t).to(features.dtype if features.is_floating_point() else torch.float32)


def hamming(a: Tensor, b: Tensor) -> Tensor:
    """Normalised Hamming distance between bit templates: ``(N, m)`` x ``(M, m)`` -> ``(N, M)`` in [0, 1]."""
    a, b = a.float(), b.float()
    return (a @ (1 - b).T + (1 - a) @ b.T) / a.shape[1]


class BioHashedTarget(Restricted):
    """A target whose ``features()`` are BioHash templates."""

    def __init__(self, inner: TargetModel, defense: "BioHash") -> None:
        super().__init__(inner, defense.capabilities(inner.capabilities), budget=inner.budget,
                         name=f"{inner.name}+{defense.name}")
        self.defense = defense
        self._projection: Tensor | None = None

    def _matrix(self, dim: int) -> Tensor:
        if self._projection is None or self._projection.shape[0] != dim:
            bits = int(self.defense.config.bits) if self.defense.config.bits is not None else dim
            self._projection = biohash_projection(int(self.defense.config.key), dim, bits)
        return self._projection

    @property
    def projection(self) -> Tensor:
        """The key's projection matrix — only in the stolen-key scenario."""
        if not self.defense.config.stolen_key:
            raise CapabilityError(f"target '{self.name}': the BioHash key is secret (stolen_key = false)")
        if self._projection is None:
            raise CapabilityError(f"target '{self.name}': no template released yet, the key's dimension is unknown")
        return self._projection.clone()

    def _features(self, x: Tensor) -> Tensor:
        f = self._inner.features(x)
        f = f.reshape(len(f), -1)
        return biohash(f, self._matrix(f.shape[1]), self.defense.config.binarize)


class BioHash(Defense):
    """Release BioHash templates (keyed orthonormal projection + binarisation) instead of feature vectors."""

    class Config(ComponentConfig):
        key: int = Field(0, ge=0, description="The user/application token seeding the random projection.")
        bits: int | None = Field(
            None,
            ge=1,
            description="Template length m (<= the feature dimension; the strength: fewer bits release less). "
            "None: the feature dimension.",
        )
        binarize: Literal["zero", "median"] = Field(
            "zero", description="Bit threshold: 0 (the paper) or each template's median projection."
        )
        stolen_key: bool = Field(
            False,
            description="Stolen-token scenario: the attacker knows the key (the defended target's `projection`). "
            "False: the key is secret.",
        )

    name: ClassVar[str] = "biohash"
    threat_model: ClassVar[str] = "template protection"
    kind = "output"
    summary: ClassVar[str] = (
        "BioHashing cancelable templates: keyed orthonormal random projection of the embedding, bits at 0; "
        "Hamming matching; optional stolen-key scenario."
    )
    paper: ClassVar[str] = "https://doi.org/10.1016/j.patcog.2004.04.011"
    gradient: ClassVar[str] = "none"

    def capabilities(self, given: Capabilities) -> Capabilities:
        return frozenset(given) - {C.WEIGHTS, C.GRAD}

    def apply(self, target: TargetModel, ctx: DefenseContext | None = None) -> TargetModel:
        return BioHashedTarget(target, self)

    def report(self) -> dict[str, Any]:
        return {"bits": self.config.bits, "stolen_key": self.config.stolen_key}


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(BioHash)
