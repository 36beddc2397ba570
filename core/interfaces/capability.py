"""Capabilities: what an attacker can obtain from a target, and prior features: what a prior provides.

A target declares a set of capabilities, an attack declares the set it ``requires``, and a defense can only
take capabilities away. Likewise a prior provides a set of :class:`PriorFeature` (``Prior.features``,
``PriorBuilder.features``) and an attack declares the set it needs (``Attack.prior_requires``). Both are
checked by :func:`missing`, by ``Attack.check`` before a run and by the bench plan before anything runs (an
attack x defense x target cell whose requirements are not met is skipped, with the reason).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum


class Capability(str, Enum):
    LOGITS = "logits"  # raw pre-softmax scores
    PROBS = "probs"  # the released confidence vector
    TOPK = "topk"  # the k largest confidences and their labels
    LABEL = "label"  # the predicted label only
    FEATURES = "features"  # the penultimate embedding (a face template, for recognition models)
    GRAD = "grad"  # gradients of whatever else is released, w.r.t. the input (white-box)
    WEIGHTS = "weights"  # the parameters themselves
    #: a participant's model update as the server that receives it holds it: the model the server sent, the
    #: upload, the protocol's public settings (``TargetModel.update()``); only a backend that has one grants it
    UPDATE = "update"

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.value


Capabilities = frozenset[Capability]

ALL: Capabilities = frozenset(Capability)
#: what a deployed model can give: everything but a participant's update, which only a training protocol's
#: view has (the federated backend's ``server:client-K``)
MODEL: Capabilities = ALL - {Capability.UPDATE}
WHITE_BOX: Capabilities = ALL
BLACK_BOX: Capabilities = frozenset({Capability.PROBS, Capability.TOPK, Capability.LABEL})
TOP_K: Capabilities = frozenset({Capability.TOPK, Capability.LABEL})
LABEL_ONLY: Capabilities = frozenset({Capability.LABEL})
EMBEDDING: Capabilities = frozenset({Capability.FEATURES})

#: Named access levels, as ``registry.toml`` and the CLI spell them.
ACCESS_LEVELS: dict[str, Capabilities] = {
    "white-box": WHITE_BOX,
    "black-box": BLACK_BOX,
    "top-k": TOP_K,
    "label-only": LABEL_ONLY,
    "embedding": EMBEDDING,
}


def caps(values: Iterable[str | Capability]) -> Capabilities:
    """Parse capability names (``"grad"``) into a frozenset of :class:`Capability`."""
    return frozenset(Capability(v) for v in values)


class PriorFeature(str, Enum):
    """What a prior provides beyond ``decode(z)``; an attack that needs one lists it in ``prior_requires``."""

    CONDITIONAL = "conditional"  # decode(z, labels) draws the given *target* classes (PLG-MI's cGAN)
    LAYERED = "layered"  # decode_to / decode_from between generator blocks (IF-GMI)
    STYLE_SPACE = "style-space"  # a mapping z -> w of its own and decode_style (StyleGAN; PPA searches w)
    DISCRIMINATOR = "discriminator"  # realism(x), a discriminator/critic score (GMI's and KEDMI's prior term)

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.value

    @property
    def meaning(self) -> str:
        """What the feature is, in the words an error message or ``show`` uses."""
        return _MEANING[self]


_MEANING = {
    PriorFeature.CONDITIONAL: "decodes (z, labels) with the target's classes",
    PriorFeature.LAYERED: "layered decoding: decode_to/decode_from between generator blocks",
    PriorFeature.STYLE_SPACE: "a style space of its own (to_style, decode_style)",
    PriorFeature.DISCRIMINATOR: "a discriminator (realism)",
}

PriorFeatures = frozenset[PriorFeature]


def prior_features(values: Iterable[str | PriorFeature]) -> PriorFeatures:
    """Parse prior feature names (``"layered"``) into a frozenset of :class:`PriorFeature`."""
    return frozenset(PriorFeature(v) for v in values)


def missing(required: Iterable[Capability | PriorFeature], provided: Iterable[Capability | PriorFeature]) -> frozenset:
    """What of ``required`` is not ``provided``: the one test of capabilities and prior features alike."""
    return frozenset(required) - frozenset(provided)


def describe(c: Iterable[Capability | PriorFeature]) -> str:
    return "{" + ", ".join(sorted(x.value for x in c)) + "}"


def explain(features: Iterable[PriorFeature]) -> str:
    """``{layered} (layered decoding: ...)``: a feature set with what each member means."""
    fs = sorted(features, key=lambda f: f.value)
    return describe(fs) + (" (" + "; ".join(f.meaning for f in fs) + ")" if fs else "")
