"""``none``: the undefended baseline. The attacker faces the target exactly as given."""

from __future__ import annotations

from typing import ClassVar

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.capability import Capabilities
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import Defense, DefenseContext
from invertkit.core.interfaces.target import TargetModel


class NoDefense(Defense):
    """No defense: ``capabilities(given) == given`` and :meth:`apply` returns the very same target object
    (same query counter, same budget)."""

    class Config(ComponentConfig):
        """No options: the baseline has no strength to tune."""

    name: ClassVar[str] = "none"
    threat_model: ClassVar[str] = "any"
    kind = "output"
    summary: ClassVar[str] = "Undefended baseline: the target is released as it is."
    #: no paper proposes "no defense"; it is the reference every defended cell is compared against
    paper: ClassVar[str] = ""
    gradient: ClassVar[str] = "exact"

    def capabilities(self, given: Capabilities) -> Capabilities:
        return frozenset(given)

    def apply(self, target: TargetModel, ctx: DefenseContext | None = None) -> TargetModel:
        return target


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(NoDefense)
