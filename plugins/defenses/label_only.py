"""``label-only``: release nothing but the predicted label.

The strongest of the confidence-hiding countermeasures discussed by Fredrikson et al. (CCS 2015,
https://doi.org/10.1145/2810103.2813677): with only the label, confidence-exploiting inversion has nothing to
climb. Every capability except ``label`` is removed; the label is the undefended argmax.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.capability import Capabilities, Capability
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import OutputDefense


class LabelOnly(OutputDefense):
    """Remove every capability except ``label``; the label is unchanged."""

    class Config(ComponentConfig):
        """No options: the release is the label, nothing weaker or stronger."""

    name: ClassVar[str] = "label-only"
    threat_model: ClassVar[str] = "output restriction"
    summary: ClassVar[str] = "Release only the predicted label (argmax of the undefended confidences); no gradients."
    paper: ClassVar[str] = "https://doi.org/10.1145/2810103.2813677"
    removes: ClassVar[Capabilities] = frozenset(Capability) - {Capability.LABEL}
    straight_through: ClassVar[bool] = False
    gradient: ClassVar[str] = "none"

    def transform(self, probs: Tensor, generator: torch.Generator) -> Tensor:
        return probs


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(LabelOnly)
