"""``Metric``: torchmetrics-style ``update / compute / reset`` over attack results.

Metrics judge reconstructions with an *evaluation model* distinct from the target, given through
:class:`MetricContext`. Implementations accumulate sums so that the value does not depend on how the
results were split into batches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from invertkit.core.interfaces.config import ComponentConfig, build_config


@dataclass
class MetricContext:
    """``eval_logits(x)`` and ``eval_features(x)`` evaluate images with the evaluation model;
    ``private_images``/``private_labels`` are the target's private training data (the reference set);
    ``judges`` are the independent judge's classifiers (an ensemble of evaluation models of other
    architectures and seeds, trained on the private data, never the target; empty when the preset has none).
    ``attacked`` are the identities attacked in the cell (``None``: every private identity), the reference
    set of set metrics (FID, KID, PRDC)."""

    eval_logits: Callable[[Tensor], Tensor] | None
    eval_features: Callable[[Tensor], Tensor] | None
    private_images: Tensor
    private_labels: Tensor
    num_classes: int
    judges: list[Any] = field(default_factory=list)
    attacked: Tensor | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    extras: dict[str, Any] = field(default_factory=dict)
    #: the undefended target's logits (the evaluator's copy, no budget, not the attacker's queries): the
    #: target-side figures of a target without an evaluation model
    target_logits: Callable[[Tensor], Tensor] | None = None

    def available(self) -> frozenset[str]:
        """What this context holds, in :attr:`Metric.needs` terms."""
        have = set()
        if self.eval_logits is not None:
            have.add("eval")
        if len(self.private_images) > 0:
            have.add("private")
        if self.judges:
            have.add("judges")
        if self.target_logits is not None:
            have.add("target")
        if self.extras.get("paired_reference") is not None:
            have.add("paired")
        return frozenset(have)


#: what a metric can need of its context: ``eval`` (an evaluation model), ``private`` (the target's private
#: images), ``judges`` (the independent judge's classifiers), ``target`` (the undefended target's logits),
#: ``paired`` (``extras["paired_reference"]``: the very images the attacked release was computed from, which the
#: reconstructions are compared with one to one: an embedder's leaked templates, a federated client's batch)
METRIC_NEEDS = frozenset({"eval", "private", "judges", "target", "paired"})
_NEED_WORDS = {"eval": "an evaluation model", "private": "private images", "judges": "judges",
               "target": "the target's logits", "paired": "the images the attacked release was computed from"}


def metric_shortfall(metric_cls: Any, available: frozenset[str]) -> str:
    """Why ``metric_cls`` cannot be computed on a context holding ``available``, or ``""``."""
    lack = sorted(frozenset(getattr(metric_cls, "needs", METRIC_NEEDS - {"judges", "target"})) - available)
    if not lack:
        return ""
    return f"needs {' and '.join(_NEED_WORDS.get(n, n) for n in lack)}, which the target's entry does not give"


class Metric(ABC):
    name: ClassVar[str]
    #: the keys :meth:`compute` returns
    keys: ClassVar[tuple[str, ...]]
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig
    #: what it needs of its :class:`MetricContext` (see :data:`METRIC_NEEDS`); a cell whose context lacks one
    #: records the metric as not applicable, with the reason, instead of computing it
    needs: ClassVar[frozenset[str]] = frozenset({"eval", "private"})
    #: True if a higher value means a stronger attack (for orderings and reports)
    higher_is_better: ClassVar[dict[str, bool]] = {}
    summary: ClassVar[str] = ""

    def __init__(self, ctx: MetricContext, config: ComponentConfig | dict[str, Any] | None = None) -> None:
        self.ctx = ctx
        self.config = build_config(self.Config, config, what=f"metric '{self.name}'")
        self.reset()

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def update(self, images: Tensor, labels: Tensor) -> None:
        """Add reconstructions ``images`` (``(N, C, H, W)`` in ``[0, 1]``) for identities ``labels``."""

    @abstractmethod
    def compute(self) -> dict[str, float]: ...
