"""Capabilities: what an attacker can obtain from a target.

A target declares a set of them, an attack declares the set it ``requires``, and a defense can only take
capabilities away. The bench drops an attack x defense pair whose requirements are not met, before running.
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

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.value


Capabilities = frozenset[Capability]

ALL: Capabilities = frozenset(Capability)
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


def describe(c: Iterable[Capability]) -> str:
    return "{" + ", ".join(sorted(x.value for x in c)) + "}"
