"""``TargetBackend``: the plugin kind that turns a ``registry.toml`` target entry into a
:class:`~invertkit.core.interfaces.target.TargetModel` (torch, ONNX, a user's own)."""

from __future__ import annotations

from abc import ABC
from typing import TYPE_CHECKING

from invertkit.core.interfaces.capability import MODEL, Capabilities

if TYPE_CHECKING:  # pragma: no cover
    from invertkit.core.interfaces.target import TargetModel


class TargetBackend(ABC):
    """A target backend plugin: turns a ``registry.toml`` target entry into a :class:`TargetModel`.

    ``load(spec, scenario)`` gets the validated :class:`~invertkit.core.catalog.TargetSpec` and the
    preset's :class:`~invertkit.core.zoo.scenario.Scenario` (data, trained preset models), or for a standalone
    target (a model the user brings) the scenario made of its own entry, whose ``facts["model"]`` holds the
    model's ``input_shape`` and ``preprocess``. ``inspect(model, plugins)`` says what a brought model file says
    about itself (``input_shape``, ``outputs``, ``preprocess``; whichever it knows).
    """

    name: str
    summary: str = ""
    #: the most an attacker can get from this backend (the entry's ``access`` narrows it further)
    capabilities: Capabilities = MODEL

    def evaluator_extras(self, spec, scenario, plugins) -> dict:  # noqa: ANN001
        """What the evaluator (never the attacker) is given of a view beyond the preset's private data, added to
        ``MetricContext.extras`` (e.g. ``paired_reference``: the very images the attacked view was computed
        from, a federated client's batch). Nothing by default."""
        return {}

    def load(self, spec, scenario, plugins) -> TargetModel:  # noqa: ANN001
        raise NotImplementedError

    def inspect(self, model, plugins) -> dict:  # noqa: ANN001
        from invertkit.core.errors import UsageError

        raise UsageError(f"backend '{self.name}' cannot load a model without a preset")


__all__ = ["TargetBackend"]
