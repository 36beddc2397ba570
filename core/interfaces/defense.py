"""``Defense``: produces the target an attacker faces, never with more capabilities than it was given.

Two kinds:

* **output** defenses (:class:`OutputDefense`) wrap a target and transform the confidence vector it
  releases. They are judged *as deployed*: such a defense filters what an API returns, and an attacker who
  holds gradients holds the weights and is not behind the filter. So an API filter removes ``grad``
  (``filters_api``): white-box attacks are skipped under it, and the white-box figure for that model is the
  undefended one. The explicit, opt-in **adaptive** mode (``DefenseContext.adaptive``, ``bench --adaptive``)
  models an attacker who holds the weights *and* must still pass the filter: gradients then flow through the
  transform where it is differentiable and, where it is not (rounding, top-k, cut-offs), by BPDA with the
  identity as the backward approximation (Athalye et al., ICML 2018), and every record says so.
* **training** defenses produce a new target by training it; they are given a :class:`DefenseContext`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from invertkit.core.interfaces.capability import Capabilities, Capability
from invertkit.core.interfaces.config import ComponentConfig, build_config
from invertkit.core.interfaces.target import TargetModel

C = Capability

#: what an output defense can never release (it would bypass the transform)
_BYPASSING: Capabilities = frozenset({C.LOGITS, C.FEATURES, C.WEIGHTS, C.UPDATE})


def filtered_capabilities(given: Capabilities, removes: Capabilities = frozenset()) -> Capabilities:
    """What a filter of the released confidence vector (an output defense, the query monitor) leaves of
    ``given``: less ``removes`` and less what would bypass the filter (logits, features, weights); when
    nothing is released to filter (neither probs nor top-k), whatever label-level access there was."""
    left = frozenset(given) - frozenset(removes) - _BYPASSING
    if C.PROBS not in given and C.TOPK not in given:
        return left & {C.LABEL}
    return left


@dataclass
class DefenseContext:
    """What a defense may use beyond the target.

    Output defenses only need ``seed``. Training-time defenses get the scenario: ``data`` (a
    :class:`~invertkit.core.data.Split`: private train/test, public), ``recipe`` (the target's training
    recipe, a :class:`~invertkit.core.catalog.ModelRecipe`), ``new_model()`` (a fresh, untrained network of
    the target's architecture) and ``cached(key, train, build=None)`` which returns the network ``train()``
    produces, trained once per content key and kept in the local cache; ``build()`` makes an empty network
    to load it into (default ``new_model``) — see :func:`invertkit.core.zoo.scenario.defense_context`.
    """

    seed: int = 0
    #: the attacker is adaptive (holds the weights and must pass an API filter): opt-in, labelled
    adaptive: bool = False
    data: Any = None
    recipe: Any = None
    new_model: Callable[[], Any] | None = None
    cached: Callable[..., Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Defense(ABC):
    name: ClassVar[str]
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig
    kind: ClassVar[Literal["output", "training"]] = "output"
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: how gradients pass, for the report ("exact", "straight-through", "none")
    gradient: ClassVar[str] = "exact"
    #: the defense filters what an API returns: an attacker who holds gradients holds the weights and is not
    #: behind it, so it removes ``grad`` unless the attacker is explicitly adaptive (see :meth:`granted`)
    filters_api: ClassVar[bool] = False
    #: an embedder's stored templates leak as the target releases them (the template-inversion threat model);
    #: ``False``: the defense keeps them from leaking (secure storage), so attacks that need leaked templates
    #: (``Attack.needs_templates``) are skipped, with the reason
    releases_templates: ClassVar[bool] = True

    def __init__(self, config: ComponentConfig | dict[str, Any] | None = None) -> None:
        self.config = build_config(self.Config, config, what=f"defense '{self.name}'")

    @abstractmethod
    def capabilities(self, given: Capabilities) -> Capabilities:
        """The capabilities left to the attacker when the undefended target has ``given``. A subset of it."""

    def granted(self, given: Capabilities, *, adaptive: bool = False) -> Capabilities:
        """What the attacker gets as deployed: :meth:`capabilities`, less ``grad`` for an API filter unless
        ``adaptive``. The plan, the CLI and the defended targets all ask this one method."""
        left = frozenset(self.capabilities(frozenset(given)))
        if self.filters_api and not adaptive:
            left = left - {C.GRAD}
        return left

    def report(self) -> dict[str, Any]:
        """Facts about the defense as applied (e.g. DP-SGD's spent epsilon), for the bench record."""
        return {}

    @abstractmethod
    def apply(self, target: TargetModel, ctx: DefenseContext | None = None) -> TargetModel:
        """The defended target."""


class OutputDefense(Defense):
    """A defense that post-processes the released confidence vector.

    Subclasses set ``removes`` and implement :meth:`transform` (``probs -> released probs``, rows summing
    to one). ``straight_through`` says that the transform has no useful gradient, so an *adaptive* attacker
    differentiates it by BPDA (identity backward); a deployed API releases no gradient at all.
    """

    filters_api: ClassVar[bool] = True

    removes: ClassVar[Capabilities] = frozenset({C.LOGITS, C.FEATURES, C.WEIGHTS})
    straight_through: ClassVar[bool] = False

    def capabilities(self, given: Capabilities) -> Capabilities:
        # logits, features and weights would bypass the transform, and DefendedTarget does not serve them:
        # they go whatever a subclass's ``removes`` says
        return filtered_capabilities(given, self.removes)

    @abstractmethod
    def transform(self, probs: Tensor, generator: torch.Generator) -> Tensor: ...

    def apply(self, target: TargetModel, ctx: DefenseContext | None = None) -> TargetModel:
        seed = ctx.seed if ctx is not None else 0
        return DefendedTarget(target, self, seed=seed, adaptive=bool(ctx is not None and ctx.adaptive))


class WrappedTarget(TargetModel):
    """A target seen through a defense that filters what it releases: the wrapped target's classes, input
    shape, budget and device, the capabilities the defense grants (``adaptive``: gradients too), and
    ``probs``/``topk`` taken from :meth:`_released` (the filtered full confidence vector), which subclasses
    state. :class:`DefendedTarget` and the query monitor's stream are the two."""

    def __init__(self, inner: TargetModel, defense: Defense, *, adaptive: bool = False) -> None:
        super().__init__(
            num_classes=inner.num_classes,
            input_shape=inner.input_shape,
            capabilities=defense.granted(inner.capabilities, adaptive=adaptive),
            budget=inner.budget,
            name=f"{inner.name}+{defense.name}",
            max_topk=inner.max_topk,
        )
        self._inner = inner
        self.defense = defense

    @property
    def device(self) -> torch.device:
        return self._inner.device

    def _undefended(self, x: Tensor) -> Tensor | None:
        """The wrapped target's full confidence vector: from ``probs``, or else from a top-k of every class;
        ``None`` when it releases neither (labels only).

        (A target with ``topk`` but not ``probs`` still answers ``topk(x, num_classes)``: that *is* the whole
        vector, so it must go through the defense too. One query per row either way.)
        """
        if C.PROBS in self._inner.capabilities:
            return self._inner.probs(x)
        if C.TOPK not in self._inner.capabilities:
            return None
        values, indices = self._inner.topk(x, self._inner.num_classes)
        full = torch.zeros(values.shape[0], self._inner.num_classes, dtype=values.dtype, device=values.device)
        full = full.scatter(1, indices, values)
        if values.shape[1] < self._inner.num_classes:  # a capped top-k: what is visible, as a distribution
            full = full / full.sum(1, keepdim=True).clamp_min(1e-12)
        return full

    @abstractmethod
    def _released(self, x: Tensor) -> Tensor:
        """The full confidence vector as released (only asked when the wrapped target has probs or top-k)."""

    def _probs(self, x: Tensor) -> Tensor:
        return self._released(x)

    def _topk(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        # only reachable when the wrapped target has ``topk`` (capabilities are a subset), hence ``probs`` or
        # ``topk``: the released top-k is always the top-k of the *released* vector
        values, indices = torch.topk(self._released(x), k, dim=1)
        return values, indices


class DefendedTarget(WrappedTarget):
    """A target seen through an :class:`OutputDefense` (as deployed; ``adaptive``: BPDA gradients too)."""

    defense: OutputDefense

    def __init__(self, inner: TargetModel, defense: OutputDefense, *, seed: int = 0, adaptive: bool = False) -> None:
        super().__init__(inner, defense, adaptive=adaptive)
        self.generator = torch.Generator().manual_seed(int(seed) + 7919)

    def _released(self, x: Tensor) -> Tensor:
        p = self._undefended(x)
        assert p is not None  # released only when the wrapped target has probs or top-k
        q = self.defense.transform(p, self.generator).to(p.dtype)
        if self.defense.straight_through and p.requires_grad:
            q = p + (q - p).detach()  # BPDA: the released value forward, the identity backward
        return q

    def _label(self, x: Tensor) -> Tensor:
        if C.PROBS in self._inner.capabilities or C.TOPK in self._inner.capabilities:
            return self._released(x).argmax(dim=1)
        return self._inner.label(x)


class TrainingDefense(Defense):
    """A defense that trains a new target (DP-SGD, MID, BiDO, ...). It keeps the capabilities it was given:
    the attacker gets the same access to a differently trained model.

    Subclasses implement :meth:`train` (``ctx.new_model()`` -> trained module); :meth:`apply` caches the
    result by (defense, config, recipe, data) and wraps it like the original target.
    """

    kind = "training"

    def capabilities(self, given: Capabilities) -> Capabilities:
        return frozenset(given)

    @abstractmethod
    def train(self, ctx: DefenseContext) -> Any:
        """Return the defended network (an ``nn.Module`` whose forward gives logits)."""

    def apply(self, target: TargetModel, ctx: DefenseContext | None = None) -> TargetModel:
        from invertkit.core.errors import UsageError
        from invertkit.core.interfaces.target import retarget

        if ctx is None or ctx.cached is None or ctx.new_model is None:
            raise UsageError(f"training-time defense '{self.name}' needs the scenario (data, recipe); run it through the bench")
        key = {"defense": self.name, "config": self.config.model_dump(mode="json"), "seed": ctx.seed}
        net = ctx.cached(key, lambda: self.train(ctx))
        return retarget(target, net)
