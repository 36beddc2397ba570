"""``TargetModel``: what an attacker holds, behind an enforced access policy.

Every public method (``logits``, ``probs``, ``log_probs``, ``topk``, ``label``, ``features``) checks the
capability it needs, validates the input shape, counts one query per input row against the budget
*before* answering, detaches everything when the target has no ``grad`` capability, and refuses NaN
and infinities (in ``label``, those of the scores the label is the argmax of).
Subclasses implement the private ``_`` methods; wrappers (access levels, defenses) call the *public*
methods of the target they wrap, so they can never see more than it exposes.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from invertkit.core.errors import CapabilityError, NonFiniteError, QueryBudgetExceeded, ShapeError
from invertkit.core.interfaces.capability import MODEL, Capabilities, Capability, describe

C = Capability


@dataclass(frozen=True)
class UpdateRelease:
    """A participant's model update as the server that receives it holds it (the ``update`` capability): the
    model it sent (``sent``), the participant's upload (``upload``, same architecture), and the protocol's
    public settings the server itself configured: the local learning rate, batch size and number of local
    steps, and whether the local steps ran in train mode. Never the participant's data. Fresh copies on every
    call: an attacker may change them freely."""

    sent: nn.Module
    upload: nn.Module
    lr: float
    batch_size: int
    local_steps: int
    train_mode: bool = False


class TargetModel(ABC):
    """A classifier (or embedding model) as an attacker sees it.

    ``input_shape`` is the shape of one input row: ``(C, H, W)`` for images (float in ``[0, 1]``), ``(D,)`` for a
    feature vector (a tabular record), any rank in general; inputs are batches ``(N, *input_shape)``.
    ``budget`` is the number of input rows the attacker may submit (``None``: unlimited).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, ...],
        capabilities: Capabilities,
        budget: int | None = None,
        name: str = "target",
        max_topk: int | None = None,
    ) -> None:
        self.num_classes = int(num_classes)
        #: the most entries ``topk`` releases (``None``: up to ``num_classes``); a top-k API's ``k``
        self.max_topk = max_topk
        self.input_shape = tuple(int(s) for s in input_shape)
        self._capabilities = frozenset(capabilities)
        self.budget = budget
        self.queries = 0
        #: a query was refused past the budget (the bench's record says so)
        self.exhausted = False
        self.name = name

    # ----------------------------------------------------------------- policy
    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def has(self, *wanted: Capability) -> bool:
        return all(w in self._capabilities for w in wanted)

    def _require(self, cap: Capability) -> None:
        if cap not in self._capabilities:
            raise CapabilityError(
                f"target '{self.name}' does not expose '{cap.value}' "
                f"(it exposes {describe(self._capabilities)})"
            )

    def _check_input(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 1 + len(self.input_shape) or tuple(x.shape[1:]) != self.input_shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeError(
                f"target '{self.name}' expects inputs of shape (N, {', '.join(map(str, self.input_shape))}), got {got}"
            )
        return x

    def charge(self, n: int) -> None:
        """Count ``n`` queries, refusing (before anything is answered) past the budget."""
        if self.budget is not None and self.queries + n > self.budget:
            self.exhausted = True
            raise QueryBudgetExceeded(
                f"query budget of target '{self.name}' exceeded: {self.queries} used, "
                f"{n} more asked, budget {self.budget}"
            )
        self.queries += n

    def _answer(self, cap: Capability, x: Tensor, fn: Callable[..., object], *args: object):
        self._require(cap)
        x = self._check_input(x)
        n = int(x.shape[0])
        self.charge(n)
        try:
            if C.GRAD in self._capabilities:
                out = fn(x, *args)
            else:
                with torch.no_grad():
                    out = fn(x.detach(), *args)
        except QueryBudgetExceeded:
            self.queries -= n  # a wrapped target refused: nothing was answered, so nothing is counted
            raise
        for t in out if isinstance(out, tuple) else (out,):
            self._refuse_non_finite(t, cap.value)
            if C.GRAD not in self._capabilities:
                t.requires_grad_(False)
        return out

    def _refuse_non_finite(self, t: Tensor, what: str) -> Tensor:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteError(f"target '{self.name}' produced non-finite {what}")
        return t

    # ------------------------------------------------------------ public API
    def logits(self, x: Tensor) -> Tensor:
        return self._answer(C.LOGITS, x, self._logits)

    def probs(self, x: Tensor) -> Tensor:
        return self._answer(C.PROBS, x, self._probs)

    def log_probs(self, x: Tensor) -> Tensor:
        """Log-confidences from whichever of ``logits``/``probs`` the target exposes (one query per row)."""
        if C.LOGITS in self._capabilities:
            return self._answer(C.LOGITS, x, lambda v: torch.log_softmax(self._logits(v), dim=1))
        return self._answer(C.PROBS, x, lambda v: torch.log(self._probs(v).clamp_min(1e-12)))

    def topk(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` largest confidences and their labels; at most ``max_topk`` of them."""
        k = max(1, min(int(k), self.num_classes, self.max_topk or self.num_classes))
        return self._answer(C.TOPK, x, self._topk, k)

    def label(self, x: Tensor) -> Tensor:
        return self._answer(C.LABEL, x, self._label)

    def features(self, x: Tensor) -> Tensor:
        return self._answer(C.FEATURES, x, self._features)

    @property
    def module(self) -> nn.Module:
        """The underlying network (``weights`` capability)."""
        self._require(C.WEIGHTS)
        return self._module()

    def update(self) -> UpdateRelease:
        """A participant's update as the server holds it (``update`` capability): one query."""
        self._require(C.UPDATE)
        self.charge(1)
        try:
            return self._update()
        except QueryBudgetExceeded:
            self.queries -= 1  # a wrapped target refused: nothing was answered
            raise

    def reset_queries(self) -> None:
        """Zero the query counter. For whoever deploys the target (the bench, a test harness); an attack never
        holds the target itself, only its :class:`~invertkit.core.interfaces.access.TargetView`, which has
        no such method."""
        self.queries = 0
        self.exhausted = False

    def charge_derived(self, n: int) -> None:
        """Charge ``n`` queries that a re-used artifact derived from this target (a cached student, a prior
        fitted to it) cost when it was made; refused past the budget like any other query."""
        if int(n) < 0:
            raise ValueError("charge_derived() takes a non-negative number of queries")
        self.charge(int(n))

    # --------------------------------------------------- for implementations
    def _logits(self, x: Tensor) -> Tensor:
        raise CapabilityError(f"target '{self.name}' has no logits")

    def _probs(self, x: Tensor) -> Tensor:
        return torch.softmax(self._logits(x), dim=1)

    def _topk(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        values, indices = torch.topk(self._probs(x), k, dim=1)
        return values, indices

    def _label(self, x: Tensor) -> Tensor:
        # the label is the argmax of scores the caller never sees: refuse them when they are not finite, as
        # ``probs`` would (the argmax of NaN is a valid-looking class)
        return self._refuse_non_finite(self._probs(x), "scores behind a label").argmax(dim=1)

    def _features(self, x: Tensor) -> Tensor:
        raise CapabilityError(f"target '{self.name}' has no features")

    def _module(self) -> nn.Module:
        raise CapabilityError(f"target '{self.name}' has no weights")

    def _update(self) -> UpdateRelease:
        raise CapabilityError(f"target '{self.name}' has no participant's update")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, caps={describe(self._capabilities)}, queries={self.queries})"


def split_classifier(module: nn.Module) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]] | None:
    """Return ``(features, head)`` callables for a classifier, or ``None`` if it cannot be split.

    Supported: modules with ``features(x)`` + ``head(f)`` (invertkit's zoo) and timm models
    (``forward_features`` + ``forward_head(pre_logits=True)`` + ``get_classifier()``).
    """
    if callable(getattr(module, "features", None)) and callable(getattr(module, "head", None)):
        return module.features, module.head  # type: ignore[return-value]
    if hasattr(module, "forward_features") and hasattr(module, "forward_head") and hasattr(module, "get_classifier"):

        def feats(x: Tensor) -> Tensor:
            return module.forward_head(module.forward_features(x), pre_logits=True)  # type: ignore[operator]

        return feats, module.get_classifier()  # type: ignore[return-value]
    return None


class TorchTarget(TargetModel):
    """A local ``nn.Module`` classifier. Undefended, it is white-box: every capability."""

    def __init__(
        self,
        module: nn.Module,
        *,
        num_classes: int,
        input_shape: tuple[int, ...],
        capabilities: Capabilities | None = None,
        budget: int | None = None,
        name: str = "target",
        device: str | torch.device = "cpu",
    ) -> None:
        self._net = module.eval().to(device)
        for p in self._net.parameters():
            p.requires_grad_(False)
        self._split = split_classifier(self._net)
        full = MODEL if self._split else MODEL - {C.FEATURES}
        super().__init__(
            num_classes=num_classes,
            input_shape=input_shape,
            capabilities=full if capabilities is None else frozenset(capabilities) & full,
            budget=budget,
            name=name,
        )
        self._device = torch.device(device)

    @property
    def device(self) -> torch.device:
        return self._device

    def _logits(self, x: Tensor) -> Tensor:
        return self._net(x.to(self._device))

    def _features(self, x: Tensor) -> Tensor:
        assert self._split is not None
        return self._split[0](x.to(self._device))

    def _module(self) -> nn.Module:
        return self._net


class Restricted(TargetModel):
    """An access level over another target: exposes a subset of its capabilities, and a budget.

    Each answer is obtained through the wrapped target's *public* API.
    """

    def __init__(self, inner: TargetModel, capabilities: Capabilities, *, budget: int | None = None,
                 name: str | None = None, max_topk: int | None = None):
        limits = [m for m in (max_topk, inner.max_topk) if m is not None]
        super().__init__(
            num_classes=inner.num_classes,
            input_shape=inner.input_shape,
            capabilities=frozenset(capabilities) & inner.capabilities,
            budget=budget,
            name=name or inner.name,
            max_topk=min(limits) if limits else None,
        )
        self._inner = inner

    @property
    def device(self) -> torch.device:
        return self._inner.device

    def _logits(self, x: Tensor) -> Tensor:
        return self._inner.logits(x)

    def _probs(self, x: Tensor) -> Tensor:
        return self._inner.probs(x)

    def _topk(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return self._inner.topk(x, k)

    def _label(self, x: Tensor) -> Tensor:
        return self._inner.label(x)

    def _features(self, x: Tensor) -> Tensor:
        return self._inner.features(x)

    def _module(self) -> nn.Module:
        return self._inner.module

    def _update(self) -> UpdateRelease:
        return self._inner.update()


def retarget(target: TargetModel, module: nn.Module) -> TargetModel:
    """A target over ``module`` with the same access as ``target`` (capabilities, budget, name, top-k cap)."""
    out = TorchTarget(
        module,
        num_classes=target.num_classes,
        input_shape=target.input_shape,
        capabilities=target.capabilities,
        budget=target.budget,
        name=target.name,
        device=target.device,
    )
    out.max_topk = target.max_topk
    return out


def _register_view() -> None:
    from invertkit.core.interfaces.access import TargetView

    TargetModel.register(TargetView)  # an attack may type the view it is handed as a TargetModel


_register_view()


from invertkit.core.interfaces.backend import TargetBackend  # noqa: E402,F401 - re-exported (its old home)
