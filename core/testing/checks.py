"""What the contract suites (:mod:`invertkit.core.testing.contracts`) share: their hypothesis settings, the
capabilities a query costs, and the checks of a target's answers: :func:`ask` calls the method that answers
a capability, :func:`assert_distributions` and the private checks judge what it released, and
:func:`check_budget` drives a budgeted target through a sequence of calls."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from invertkit.core.errors import QueryBudgetExceeded
from invertkit.core.interfaces.capability import ACCESS_LEVELS, Capabilities, Capability
from invertkit.core.interfaces.target import TargetModel
from invertkit.core.testing.strategies import capability_sets, image_batches

C = Capability

MAX_EXAMPLES = 25

#: capabilities answered by a method that takes a batch (and costs one query per row)
QUERY_CAPABILITIES: tuple[Capability, ...] = (C.LOGITS, C.PROBS, C.TOPK, C.LABEL, C.FEATURES)

#: the capabilities that make an attack send queries to the target
QUERYING: Capabilities = frozenset({C.LOGITS, C.PROBS, C.TOPK, C.LABEL, C.FEATURES, C.UPDATE})

contract_settings = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    # the same test function runs once per subclass; that is the point of a contract
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors, HealthCheck.data_too_large],
)

#: access levels first (``top-k``: topk without probs, ...), then arbitrary subsets
access_sets = st.sampled_from(sorted(ACCESS_LEVELS.values(), key=lambda c: sorted(x.value for x in c))) | capability_sets()


# ------------------------------------------------------------------------------------------- helpers
@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run with ``n`` intra-op torch threads, then restore. The contracts use one: their tensors are tiny, and
    several threads only contend with each other (and with anything else running on the machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _OneThread:
    @pytest.fixture(autouse=True, scope="class")
    def _one_torch_thread(self) -> Iterator[None]:
        with torch_threads(1):
            yield


def ask(target: TargetModel, cap: Capability, x: Tensor, k: int = 2) -> Any:
    """Call the public method of ``target`` that answers ``cap`` (``weights``: the module; not ``grad``)."""
    if cap is C.LOGITS:
        return target.logits(x)
    if cap is C.PROBS:
        return target.probs(x)
    if cap is C.TOPK:
        return target.topk(x, k)
    if cap is C.LABEL:
        return target.label(x)
    if cap is C.FEATURES:
        return target.features(x)
    if cap is C.WEIGHTS:
        return target.module
    if cap is C.UPDATE:
        return target.update()
    raise ValueError(f"no method answers '{cap.value}'")


def assert_distributions(p: Tensor, num_classes: int, n: int, *, atol: float = 1e-5) -> None:
    """``p`` is ``(n, num_classes)``, finite, non-negative, rows summing to one within ``atol``."""
    assert tuple(p.shape) == (n, num_classes), f"released probs have shape {tuple(p.shape)}, want {(n, num_classes)}"
    assert p.is_floating_point(), f"released probs have dtype {p.dtype}"
    assert bool(torch.isfinite(p).all()), "released probs are not finite"
    assert bool((p >= 0).all()), f"released probs have negative entries (min {float(p.min())})"
    sums = p.detach().double().sum(dim=1)
    assert bool(torch.allclose(sums, torch.ones_like(sums), atol=atol, rtol=0)), f"rows sum to {sums.tolist()}"


def _assert_topk(values: Tensor, indices: Tensor, num_classes: int, n: int, k: int) -> None:
    k = max(1, min(k, num_classes))
    assert tuple(values.shape) == (n, k) and tuple(indices.shape) == (n, k), (values.shape, indices.shape)
    assert bool(torch.isfinite(values).all()) and bool((values >= 0).all()) and bool((values <= 1 + 1e-5).all())
    assert bool((values[:, :-1] >= values[:, 1:]).all()), "top-k values are not in descending order"
    assert not indices.is_floating_point()
    assert bool(((indices >= 0) & (indices < num_classes)).all()), "top-k indices out of range"
    for row in indices.tolist():
        assert len(set(row)) == len(row), f"top-k indices repeat a class: {row}"


def _assert_labels(labels: Tensor, num_classes: int, n: int) -> None:
    assert tuple(labels.shape) == (n,), f"labels have shape {tuple(labels.shape)}, want {(n,)}"
    assert not labels.is_floating_point(), f"labels have dtype {labels.dtype}"
    assert bool(((labels >= 0) & (labels < num_classes)).all()), f"labels out of range: {labels.tolist()}"


def _check_answer(target: TargetModel, cap: Capability, out: Any, n: int, k: int = 2) -> None:
    if cap is C.PROBS:
        assert_distributions(out, target.num_classes, n)
    elif cap is C.LOGITS:
        assert tuple(out.shape) == (n, target.num_classes) and bool(torch.isfinite(out).all())
    elif cap is C.TOPK:
        _assert_topk(out[0], out[1], target.num_classes, n, k)
    elif cap is C.LABEL:
        _assert_labels(out, target.num_classes, n)
    elif cap is C.FEATURES:
        assert out.dim() >= 2 and out.shape[0] == n and bool(torch.isfinite(out).all())
    elif cap is C.WEIGHTS:
        assert isinstance(out, nn.Module)


def _float_outputs(out: Any) -> list[Tensor]:
    items = out if isinstance(out, tuple) else (out,)
    return [t for t in items if isinstance(t, Tensor) and t.is_floating_point()]


def _images(data: st.DataObject, target: TargetModel, n: Any = None) -> Tensor:
    return data.draw(image_batches(tuple(target.input_shape), n=n), label="images").to(target.device)


#: what :func:`check_budget` calls: a capability's method (through :func:`ask`), or ``log_probs``
BudgetCall = Capability | Literal["log_probs"]


def check_budget(target: TargetModel, methods: Sequence[BudgetCall], budget: int,
                 calls: Sequence[tuple[int, int]]) -> None:
    """Give ``target`` a budget of ``budget`` rows and a fresh counter, then make ``calls``: ``(which, n)`` calls
    ``methods[which % len(methods)]`` on ``n`` random images. A call within the budget is counted exactly (one
    query per row); one past it raises :class:`~invertkit.core.errors.QueryBudgetExceeded` and is not counted;
    the counter never passes the budget."""
    target.budget = budget
    target.reset_queries()
    for which, n in calls:
        method = methods[which % len(methods)]
        name = method.value if isinstance(method, Capability) else method
        x = torch.rand((n, *target.input_shape)).to(target.device)
        before = target.queries
        if before + n > budget:
            with pytest.raises(QueryBudgetExceeded):
                _budget_call(target, method, x)
            assert target.queries == before, f"a refused '{name}' call was counted"
        else:
            _budget_call(target, method, x)
            assert target.queries == before + n, f"'{name}' on {n} rows counted as {target.queries - before} queries"
        assert target.queries <= budget


def _budget_call(target: TargetModel, method: BudgetCall, x: Tensor) -> Any:
    return ask(target, method, x) if isinstance(method, Capability) else target.log_probs(x)
