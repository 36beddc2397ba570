"""The contract of an :class:`~invertkit.core.interfaces.Attack` (:class:`AttackContract`); import it from
:mod:`invertkit.core.testing.contracts`."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invertkit.core.errors import CapabilityError, QueryBudgetExceeded
from invertkit.core.interfaces.attack import Attack
from invertkit.core.interfaces.capability import ALL, Capabilities
from invertkit.core.interfaces.prior import Prior
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.interfaces.target import TargetModel
from invertkit.core.testing.checks import QUERYING, _OneThread
from invertkit.core.testing.strategies import make_tiny_target
from invertkit.core.testing.tiny import TinyPrior

__all__ = ["AttackContract"]


class AttackContract(_OneThread):
    """Contract of an :class:`~invertkit.core.interfaces.Attack`. Set ``attack_cls`` and a fast ``config``.

    An attack that queries (its ``requires`` contains logits, probs, topk, label, features or update), given less
    budget than it needs, either lets the target's :class:`~invertkit.core.errors.QueryBudgetExceeded` through or
    ends with what it has (as :func:`~invertkit.core.optim.optimise` does): a result of the right shape, within
    the budget, the target marked ``exhausted`` or the result's ``extras["exhausted"]`` set (an attack that
    planned a smaller run with :func:`~invertkit.core.interfaces.access.affordable`). Whatever budget it is
    given (hypothesis draws them), it never goes past it; and on a target granting exactly its ``requires`` it
    asks only for what those grant (a label-only attack never reads a score).
    """

    attack_cls: ClassVar[type[Attack]]
    config: ClassVar[dict[str, Any]] = {}
    num_classes: ClassVar[int] = 4
    input_shape: ClassVar[tuple[int, int, int]] = (1, 8, 8)
    #: the identities attacked
    labels: ClassVar[tuple[int, ...]] = (0, 1)
    seed: ClassVar[int] = 0

    # -------------------------------------------------------------- overridable fixtures
    def make_attack(self) -> Attack:
        return self.attack_cls(dict(self.config))

    def make_target(self, capabilities: Capabilities | None = None, budget: int | None = None) -> TargetModel:
        """A fresh target (same network every call); white-box unless ``capabilities`` says otherwise."""
        return make_tiny_target(
            0, capabilities=capabilities, budget=budget, num_classes=self.num_classes, input_shape=self.input_shape
        )

    def make_prior(self) -> Prior | None:
        return TinyPrior(image_shape=self.input_shape, latent_dim=8, seed=0)

    def run_attack(self, target: TargetModel, seed: int | None = None) -> AttackResult:
        attack = self.make_attack()
        return attack(target, torch.tensor(self.labels), prior=self.make_prior(), seed=self.seed if seed is None else seed)

    # -------------------------------------------------------------- the contract
    def test_refuses_target_missing_a_required_capability(self) -> None:
        requires = frozenset(self.attack_cls.requires)
        if not requires:
            pytest.skip(f"attack '{self.attack_cls.name}' requires no capability")
        for cap in sorted(requires, key=lambda c: c.value):
            target = self.make_target(capabilities=ALL - {cap})
            assert cap not in target.capabilities
            with pytest.raises(CapabilityError):
                self.run_attack(target)
            assert target.queries == 0, f"refusing for lack of '{cap.value}' still sent {target.queries} queries"

    def test_result_shapes(self) -> None:
        result = self.run_attack(self.make_target())
        assert isinstance(result, AttackResult)
        assert len(result) > 0, "the attack returned no image"
        assert result.images.dim() == 4 and tuple(result.images.shape[1:]) == tuple(self.input_shape)
        assert bool(torch.isfinite(result.images).all())
        assert float(result.images.min()) >= 0.0 and float(result.images.max()) <= 1.0
        assert result.labels.shape == (len(result),) and result.scores.shape == (len(result),)
        assert set(result.labels.tolist()) <= set(self.labels), f"labels {set(result.labels.tolist())} not requested"

    def test_queries_match_the_target_counter(self) -> None:
        target = self.make_target()
        before = target.queries
        result = self.run_attack(target)
        assert result.queries == target.queries - before, (
            f"result.queries = {result.queries} but the target counted {target.queries - before}"
        )

    def test_same_seed_same_images(self) -> None:
        a = self.run_attack(self.make_target(), seed=self.seed)
        b = self.run_attack(self.make_target(), seed=self.seed)
        assert torch.equal(a.images, b.images), "the same seed gave different reconstructions"
        assert torch.equal(a.labels, b.labels)

    def test_budget_below_need_raises(self) -> None:
        if not (frozenset(self.attack_cls.requires) & QUERYING):
            pytest.skip(f"attack '{self.attack_cls.name}' does not query the target")
        full = self.run_attack(self.make_target())
        needed = full.queries
        if needed == 0:
            pytest.skip("the attack sent no query with this config")
        target = self.make_target(budget=needed - 1)
        try:
            result = self.run_attack(target)
        except QueryBudgetExceeded:
            pass
        else:  # it stopped at the budget with what it had, or planned a smaller run within it and says so
            assert target.exhausted or result.extras.get("exhausted"), (
                "the attack needed more than its budget, yet neither asked for a refused query nor says "
                "extras['exhausted']")
            assert result.images.shape == full.images.shape and bool(torch.isfinite(result.images).all())
        assert target.queries <= needed - 1

    def _needed(self) -> int:
        """Queries the attack spends without a budget (measured once per contract class)."""
        cls = type(self)
        if "_needed_queries" not in cls.__dict__:
            cls._needed_queries = self.run_attack(self.make_target()).queries
        return cls._needed_queries

    @settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(fraction=st.floats(0.0, 1.0))
    def test_never_exceeds_a_drawn_budget(self, fraction: float) -> None:
        if not (frozenset(self.attack_cls.requires) & QUERYING):
            pytest.skip(f"attack '{self.attack_cls.name}' does not query the target")
        needed = self._needed()
        budget = int(fraction * needed)
        target = self.make_target(budget=budget)
        try:
            result = self.run_attack(target)
        except QueryBudgetExceeded:
            assert target.exhausted
        else:
            assert bool(torch.isfinite(result.images).all()) and len(result) > 0
            assert result.queries <= budget
        assert target.queries <= budget, f"{target.queries} queries answered past a budget of {budget}"

    def test_asks_only_what_its_access_grants(self) -> None:
        """On a target exposing exactly ``requires`` (label-only for a label-only attack), every answered query
        is of a granted capability, and the run succeeds (an attack cannot fall back on reading more)."""
        requires = frozenset(self.attack_cls.requires)
        target = self.make_target(capabilities=requires)
        asked: list[Any] = []
        answer = target._answer

        def spy(cap: Any, *args: Any) -> Any:
            asked.append(cap)
            return answer(cap, *args)

        target._answer = spy  # type: ignore[method-assign]
        result = self.run_attack(target)
        assert len(result) > 0
        assert set(asked) <= requires, f"asked {sorted(c.value for c in set(asked) - requires)} beyond its access"
        assert result.queries == target.queries

