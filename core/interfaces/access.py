"""``TargetView``: the attacker's handle on a target — the only object an attack is given.

An attack receives the target *as defended*, behind its access wrapper. The view forwards the public,
capability-checked query API (``logits``, ``probs``, ``log_probs``, ``topk``, ``label``, ``features``,
``module`` where ``weights`` is granted, ``update`` where ``update`` is) and the facts an attacker may know
(classes, input shape, capabilities, its query count, budget and whether the budget refused a query), and
nothing else:

* it holds no reference to the wrapped target in an attribute or an instance ``__dict__`` (it has none:
  ``__slots__``), so neither ``.inner``, ``vars()`` nor ``__dict__`` leads to the undefended network;
* the counters are read-only: ``queries`` and ``budget`` are properties without setters, and there is no
  ``reset_queries``; every query is charged to the wrapped target *before* it is answered, so a budget is
  enforced by the wrapper, never by the attack trusting itself;
* attributes cannot be set on it.

Python offers no in-process security boundary: code that walks the garbage collector or a closure's cells
can still reach anything in the process. The view closes the obvious and the accidental routes (attributes,
``__dict__``, the context, the counters); the bench's cell process holds nothing else of the scenario that an
attack is handed. Run untrusted plugins in their own process (``--executor ray``) when that matters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from invertkit.core.interfaces.capability import Capabilities, Capability, describe

#: what a view forwards: query methods and read-only facts of the wrapped target
_QUERIES = ("logits", "probs", "log_probs", "topk", "label", "features", "update", "has", "charge_derived")
_FACTS = ("num_classes", "input_shape", "capabilities", "name", "max_topk", "device", "queries", "budget",
          "exhausted")


class TargetView:
    """The attacker's view of a :class:`~invertkit.core.interfaces.target.TargetModel` (see module docstring).

    ``TargetView(target)``; a view of a view is the view itself. ``isinstance(view, TargetModel)`` holds, so
    an attack may type its argument as a ``TargetModel``.
    """

    __slots__ = ("_ask",)

    def __new__(cls, target: Any) -> TargetView:
        if isinstance(target, TargetView):
            return target
        self = object.__new__(cls)

        def ask(what: str, *args: Any) -> Any:
            if what in _FACTS:
                return getattr(target, what)
            if what == "module":
                return target.module
            if what in _QUERIES:
                return getattr(target, what)(*args)
            raise AttributeError(what)

        object.__setattr__(self, "_ask", ask)
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"the attacker's view of a target is read-only (cannot set '{name}')")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"the attacker's view of a target is read-only (cannot delete '{name}')")

    def __reduce__(self):  # noqa: ANN204 - a view never travels (pickling would copy the wrapped target)
        raise TypeError("a TargetView cannot be pickled")

    # ------------------------------------------------------------------------------------------- facts
    num_classes: int = property(lambda self: self._ask("num_classes"))  # type: ignore[assignment]
    input_shape: tuple[int, ...] = property(lambda self: self._ask("input_shape"))  # type: ignore[assignment]
    capabilities: Capabilities = property(lambda self: self._ask("capabilities"))  # type: ignore[assignment]
    name: str = property(lambda self: self._ask("name"))  # type: ignore[assignment]
    max_topk: int | None = property(lambda self: self._ask("max_topk"))  # type: ignore[assignment]
    device = property(lambda self: self._ask("device"))
    queries: int = property(lambda self: self._ask("queries"), doc="queries charged so far (read-only)")  # type: ignore[assignment]
    budget: int | None = property(lambda self: self._ask("budget"), doc="the query budget (read-only)")  # type: ignore[assignment]
    exhausted: bool = property(lambda self: bool(self._ask("exhausted")),  # type: ignore[assignment]
                               doc="a query was refused past the budget (read-only): an attack ends with what it has")

    @property
    def module(self) -> nn.Module:
        """The network itself, only where the access grants ``weights``."""
        return self._ask("module")

    # ----------------------------------------------------------------------------------------- queries
    def has(self, *wanted: Capability) -> bool:
        return self._ask("has", *wanted)

    def logits(self, x: Tensor) -> Tensor:
        return self._ask("logits", x)

    def probs(self, x: Tensor) -> Tensor:
        return self._ask("probs", x)

    def log_probs(self, x: Tensor) -> Tensor:
        return self._ask("log_probs", x)

    def topk(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return self._ask("topk", x, k)

    def label(self, x: Tensor) -> Tensor:
        return self._ask("label", x)

    def features(self, x: Tensor) -> Tensor:
        return self._ask("features", x)

    def update(self) -> Any:
        """A participant's update as the server holds it (:class:`~invertkit.core.interfaces.target.UpdateRelease`),
        only where ``update`` is granted; one query."""
        return self._ask("update")

    def charge_derived(self, n: int) -> None:
        """Charge ``n`` queries that an artifact derived from this target cost when it was first made (a cached
        student or prior, re-used): the cell pays for them as if it had made it. Only ever adds."""
        self._ask("charge_derived", n)

    def __repr__(self) -> str:
        return f"TargetView({self.name!r}, caps={describe(self.capabilities)}, queries={self.queries})"


def seal(target: Any) -> TargetView:
    """The attacker's view of ``target`` (idempotent)."""
    return TargetView(target)


def counted(target: Any, fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn()`` and return its result with the queries it charged to ``target``."""
    q0 = target.queries
    out = fn()
    return out, target.queries - q0


def budget_left(target: Any) -> int | None:
    """Queries left of ``target``'s budget (``None`` when it has none): what an attack plans with."""
    budget = getattr(target, "budget", None)
    return None if budget is None else max(0, int(budget) - int(target.queries))


def affordable(target: Any, n: int, *, each: int = 1, share: float = 1.0) -> int:
    """How many of ``n`` items costing ``each`` queries apiece fit in ``share`` of what is left of ``target``'s
    budget (all ``n`` when it has none). An attack plans with it: a fixed-cost phase (a scored pool, a decoder's
    training set, noisy copies) takes what it can afford and leaves the rest to the search, and a search split
    across identities gives each its share, so a smaller budget means a smaller attack rather than a failed one.
    Planning is the attacker's courtesy to itself; the wrapper still refuses every query past the budget."""
    if n < 0 or each < 1 or not 0.0 < share <= 1.0:
        raise ValueError(f"affordable: n >= 0, each >= 1 and 0 < share <= 1 (got n={n}, each={each}, share={share})")
    left = budget_left(target)
    if left is None:
        return int(n)
    return max(0, min(int(n), int(left * share) // int(each)))
