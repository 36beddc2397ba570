"""The typed core of invertkit: interfaces, registry, plugin manager, bench engine.

Nothing in here is specific to one attack or defense method. The names below are imported on first use
(PEP 562), so ``invertkit.core.registry``, ``plugins`` and ``catalog`` load without torch (``invertkit list``
and ``--help`` start fast).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from invertkit.core.errors import InvertkitError
    from invertkit.core.interfaces import (
        Attack,
        AttackConfig,
        AttackResult,
        Capability,
        Defense,
        Metric,
        MetricContext,
        OutputDefense,
        Prior,
        PriorFeature,
        TargetModel,
    )

_WHERE = {"InvertkitError": "invertkit.core.errors", **{n: "invertkit.core.interfaces" for n in (
    "Attack", "AttackConfig", "AttackResult", "Capability", "Defense", "Metric", "MetricContext", "OutputDefense",
    "Prior", "PriorFeature", "TargetModel")}}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Attack",
    "AttackConfig",
    "AttackResult",
    "Capability",
    "Defense",
    "InvertkitError",
    "Metric",
    "MetricContext",
    "OutputDefense",
    "Prior",
    "PriorFeature",
    "TargetModel",
]
