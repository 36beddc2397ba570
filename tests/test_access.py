"""Access levels: the target contract on TorchTarget, on every Restricted level, and on defended targets;
budgets; FEATURES exactly when the network can be split."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from invertkit.core.errors import CapabilityError, QueryBudgetExceeded
from invertkit.core.interfaces.capability import (ACCESS_LEVELS, ALL, BLACK_BOX, LABEL_ONLY, MODEL, Capabilities,
                                                  Capability)
from invertkit.core.interfaces.target import Restricted, TargetModel, TorchTarget, split_classifier
from invertkit.core.testing.contracts import QUERY_CAPABILITIES, TargetContract, ask, torch_threads
from invertkit.core.testing.strategies import (
    capability_sets,
    image_batches,
    make_tiny_classifier,
    make_tiny_target,
    seeds,
    small_torch_targets,
)
from invertkit.plugins.defenses.rounding import Rounding

C = Capability
fast = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])



@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


# ------------------------------------------------------------------------------ the target contract
class TestTorchTargetContract(TargetContract):
    def make_target(self) -> TargetModel:
        return make_tiny_target(1)


class TestFlatTorchTargetContract(TargetContract):
    def make_target(self) -> TargetModel:
        return make_tiny_target(2, splittable=False, num_classes=3, input_shape=(3, 4, 4))


class TestNoGradTorchTargetContract(TargetContract):
    def make_target(self) -> TargetModel:
        return make_tiny_target(3, capabilities=ALL - {C.GRAD})


class TestNestedRestrictedContract(TargetContract):
    def make_target(self) -> TargetModel:
        return Restricted(Restricted(make_tiny_target(4), BLACK_BOX | {C.GRAD}), LABEL_ONLY | {C.PROBS})


class TestRoundedTargetContract(TargetContract):
    def make_target(self) -> TargetModel:
        return Rounding({"decimals": 2}).apply(make_tiny_target(5))


def _restricted_contract(level: str) -> type[TargetContract]:
    def make_target(self: TargetContract) -> TargetModel:
        return Restricted(make_tiny_target(6), ACCESS_LEVELS[level], name=f"tiny@{level}")

    name = "TestRestricted_" + level.replace("-", "_") + "_Contract"
    return type(name, (TargetContract,), {"make_target": make_target, "level": level})


for _level in ACCESS_LEVELS:
    _cls = _restricted_contract(_level)
    globals()[_cls.__name__] = _cls
del _level, _cls


# ------------------------------------------------------------------------------ levels and budgets
@pytest.mark.parametrize("level", sorted(ACCESS_LEVELS))
def test_restricted_exposes_the_level_intersected_with_the_target(level: str) -> None:
    full = make_tiny_target(0)  # a model holds no participant's update (only a federated client view does)
    assert Restricted(full, ACCESS_LEVELS[level]).capabilities == ACCESS_LEVELS[level] - {C.UPDATE}
    flat = make_tiny_target(0, splittable=False)
    assert Restricted(flat, ACCESS_LEVELS[level]).capabilities == ACCESS_LEVELS[level] - {C.FEATURES, C.UPDATE}


@fast
@given(outer=capability_sets(), inner=capability_sets(), seed=seeds())
def test_restricted_never_widens(outer: Capabilities, inner: Capabilities, seed: int) -> None:
    wrapped = Restricted(make_tiny_target(seed, capabilities=inner), outer)
    assert wrapped.capabilities == outer & inner
    x = torch.rand(1, 1, 8, 8)
    for cap in QUERY_CAPABILITIES:
        if cap not in wrapped.capabilities:
            with pytest.raises(CapabilityError):
                ask(wrapped, cap, x)


@fast
@given(
    level=st.sampled_from(sorted(ACCESS_LEVELS)),
    budget=st.integers(0, 10),
    calls=st.lists(st.tuples(st.integers(0, 63), st.integers(1, 4)), min_size=1, max_size=10),
)
def test_budget_is_never_exceeded_and_a_refused_call_answers_nothing(
    level: str, budget: int, calls: list[tuple[int, int]]
) -> None:
    inner = make_tiny_target(7)
    wrapped = Restricted(inner, ACCESS_LEVELS[level], budget=budget)
    methods = [c for c in QUERY_CAPABILITIES if c in wrapped.capabilities]
    refused_rows = 0
    for which, n in calls:
        cap = methods[which % len(methods)]
        before, inner_before = wrapped.queries, inner.queries
        x = torch.rand(n, 1, 8, 8)
        if before + n > budget:
            with pytest.raises(QueryBudgetExceeded):
                ask(wrapped, cap, x)
            refused_rows += n
            assert wrapped.queries == before, "the refused call was counted"
            assert inner.queries == inner_before, "the refused call reached the wrapped target"
        else:
            ask(wrapped, cap, x)
            assert wrapped.queries == before + n
            assert inner.queries == inner_before + n  # each row asked of the wrapped target once
        assert wrapped.queries <= budget
    assert wrapped.queries == sum(n for _, n in calls) - refused_rows


@fast
@given(target=small_torch_targets(capabilities=st.just(ALL), budget=st.integers(0, 8)), n=st.integers(1, 5))
def test_a_whole_batch_is_refused_when_it_does_not_fit(target: TorchTarget, n: int) -> None:
    budget = target.budget
    assert budget is not None
    x = torch.rand((n, *target.input_shape))
    if n > budget:
        with pytest.raises(QueryBudgetExceeded, match="budget"):
            target.probs(x)
        assert target.queries == 0
    else:
        assert target.probs(x).shape == (n, target.num_classes)
        assert target.queries == n


@fast
@given(budget=st.one_of(st.none(), st.integers(0, 40)), spent=st.integers(0, 40), n=st.integers(0, 50),
       each=st.integers(1, 7), share=st.floats(0.01, 1.0))
def test_affordable_plans_within_what_is_left(budget: int | None, spent: int, n: int, each: int, share: float) -> None:
    from invertkit.core.interfaces.access import affordable, seal

    target = make_tiny_target(0, budget=None if budget is None else budget + spent)
    if spent:
        target.label(torch.rand(spent, 1, 8, 8))
    k = affordable(seal(target), n, each=each, share=share)
    assert 0 <= k <= n
    if budget is None:
        assert k == n
    else:
        assert k * each <= share * budget + 1e-9  # the phase fits in its share of what is left
        if k < n:
            assert (k + 1) * each > int(share * budget)  # and takes all it can
        if k:  # spending it never trips the wrapper
            target.label(torch.rand(k * each, 1, 8, 8))
            assert not target.exhausted


def test_affordable_refuses_nonsense() -> None:
    from invertkit.core.interfaces.access import affordable

    with pytest.raises(ValueError, match="share"):
        affordable(make_tiny_target(0), 3, share=0.0)


def test_reset_queries_restores_the_budget() -> None:
    target = make_tiny_target(0, budget=3)
    target.label(torch.rand(3, 1, 8, 8))
    with pytest.raises(QueryBudgetExceeded):
        target.label(torch.rand(1, 1, 8, 8))
    target.reset_queries()
    assert target.label(torch.rand(2, 1, 8, 8)).shape == (2,)
    assert target.queries == 2


# ------------------------------------------------------------------------------ FEATURES iff splittable
class _TimmLike(nn.Module):
    """The timm protocol: forward_features, forward_head(pre_logits=True), get_classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.ReLU())
        self.fc = nn.Linear(6, 4)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward_head(self, f: Tensor, pre_logits: bool = False) -> Tensor:
        return f if pre_logits else self.fc(f)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@fast
@given(seed=seeds(), splittable=st.booleans(), asked=st.none() | capability_sets(), x=image_batches((1, 8, 8)))
def test_features_exist_iff_the_module_is_splittable(
    seed: int, splittable: bool, asked: Capabilities | None, x: Tensor
) -> None:
    module = make_tiny_classifier(seed, splittable=splittable)
    assert (split_classifier(module) is not None) == splittable
    target = TorchTarget(module, num_classes=5, input_shape=(1, 8, 8), capabilities=asked)
    wanted = MODEL if asked is None else asked
    assert (C.FEATURES in target.capabilities) == (splittable and C.FEATURES in wanted)
    assert target.capabilities == (wanted if splittable else wanted - {C.FEATURES})
    if C.FEATURES in target.capabilities:
        f = target.features(x)
        assert f.shape == (x.shape[0], 16)
        if C.LOGITS in target.capabilities:  # the head maps the features to the logits
            assert torch.allclose(module.head(f), target.logits(x), atol=1e-5)
    else:
        with pytest.raises(CapabilityError):
            target.features(x)


def test_timm_style_modules_are_splittable() -> None:
    module = _TimmLike()
    target = TorchTarget(module, num_classes=4, input_shape=(1, 8, 8))
    assert target.capabilities == MODEL
    x = torch.rand(3, 1, 8, 8)
    f = target.features(x)
    assert f.shape == (3, 6)
    assert torch.allclose(module.fc(f), target.logits(x), atol=1e-6)
    assert Restricted(target, ACCESS_LEVELS["embedding"]).capabilities == frozenset({C.FEATURES})
