"""``temperature``: release the target's confidences at a higher softmax temperature.

    released = softmax(log p / T)

``T > 1`` flattens the confidence vector (``T < 1`` sharpens it); the order of the classes, and so the
label and every top-k, is unchanged. It is an output defense: as deployed it filters what an API returns, so
it releases no gradient (white-box attacks are skipped under it); an adaptive attacker (``--adaptive``) gets
exact gradients through the transform.
Note what it does *not* do: the transform loses no information (``p`` is ``q ** T`` renormalised, so an
attacker who knows ``T`` undoes it exactly). It changes what a naive attacker optimises or ranks by (the
released ``p_y`` of different images compare differently once each is renormalised), so it mostly shows how
a defense plugin is written.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces import ComponentConfig, OutputDefense

#: confidences are floored here before the log
FLOOR = 1e-12


class Temperature(OutputDefense):
    """Rescale the log-confidences by ``1 / temperature`` and renormalise."""

    name: ClassVar[str] = "temperature"
    summary: ClassVar[str] = "Release softmax(log p / T): flatter confidences, the same label and top-k; exact gradients when adaptive."
    straight_through: ClassVar[bool] = False
    gradient: ClassVar[str] = "exact"

    class Config(ComponentConfig):
        temperature: float = Field(4.0, gt=0, description="softmax temperature T (> 1 flattens, < 1 sharpens)")

    def transform(self, probs: Tensor, generator: torch.Generator) -> Tensor:
        logp = torch.log(probs.double().clamp_min(FLOOR))
        # shift so the top class is at 0 before dividing: no -inf - -inf (NaN) however small T is
        logp = logp - logp.max(dim=1, keepdim=True).values.detach()
        return torch.softmax(logp / float(self.config.temperature), dim=1).to(probs.dtype)


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(Temperature)
