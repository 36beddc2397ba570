"""The typed core of invertkit: interfaces, registry, plugin manager, bench engine.

Nothing in here is specific to one attack or defense method.
"""

from invertkit.core.errors import InvertkitError
from invertkit.core.interfaces import (
    Attack,
    AttackResult,
    Capability,
    Defense,
    Metric,
    MetricContext,
    OutputDefense,
    Prior,
    TargetModel,
)

__all__ = [
    "Attack",
    "AttackResult",
    "Capability",
    "Defense",
    "InvertkitError",
    "Metric",
    "MetricContext",
    "OutputDefense",
    "Prior",
    "TargetModel",
]
