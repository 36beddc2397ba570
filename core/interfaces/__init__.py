"""The typed interfaces of invertkit; see each module's docstring.

Each name is imported from its module on first use (PEP 562): ``invertkit.core.interfaces.capability`` and
``config`` stay importable without torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from invertkit.core.interfaces.attack import Attack, AttackConfig, AttackContext
    from invertkit.core.interfaces.capability import ACCESS_LEVELS, Capabilities, Capability, PriorFeature, caps
    from invertkit.core.interfaces.config import ComponentConfig, build_config, parse_overrides
    from invertkit.core.interfaces.defense import DefendedTarget, Defense, DefenseContext, OutputDefense, TrainingDefense
    from invertkit.core.interfaces.metric import Metric, MetricContext
    from invertkit.core.interfaces.prior import Prior
    from invertkit.core.interfaces.results import AttackResult
    from invertkit.core.interfaces.target import Restricted, TargetBackend, TargetModel, TorchTarget, retarget, split_classifier

_MODULES = {
    "attack": ("Attack", "AttackConfig", "AttackContext"),
    "capability": ("ACCESS_LEVELS", "Capabilities", "Capability", "PriorFeature", "caps"),
    "config": ("ComponentConfig", "build_config", "parse_overrides"),
    "defense": ("DefendedTarget", "Defense", "DefenseContext", "OutputDefense", "TrainingDefense"),
    "metric": ("Metric", "MetricContext"),
    "prior": ("Prior",),
    "results": ("AttackResult",),
    "target": ("Restricted", "TargetBackend", "TargetModel", "TorchTarget", "retarget", "split_classifier"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACCESS_LEVELS",
    "Attack",
    "AttackConfig",
    "AttackContext",
    "AttackResult",
    "Capabilities",
    "Capability",
    "ComponentConfig",
    "DefendedTarget",
    "Defense",
    "DefenseContext",
    "Metric",
    "MetricContext",
    "OutputDefense",
    "Prior",
    "PriorFeature",
    "Restricted",
    "TargetBackend",
    "TargetModel",
    "TrainingDefense",
    "retarget",
    "TorchTarget",
    "build_config",
    "caps",
    "parse_overrides",
    "split_classifier",
]
