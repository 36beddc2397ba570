"""The typed interfaces of invertkit; see each module's docstring."""

from invertkit.core.interfaces.attack import Attack, AttackConfig, AttackContext
from invertkit.core.interfaces.capability import ACCESS_LEVELS, Capabilities, Capability, caps
from invertkit.core.interfaces.config import ComponentConfig, build_config, parse_overrides
from invertkit.core.interfaces.defense import DefendedTarget, Defense, DefenseContext, OutputDefense, TrainingDefense
from invertkit.core.interfaces.metric import Metric, MetricContext
from invertkit.core.interfaces.prior import Prior
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.interfaces.target import Restricted, TargetBackend, TargetModel, TorchTarget, retarget, split_classifier

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
