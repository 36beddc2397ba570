"""The contract of a :class:`~invertkit.core.interfaces.Defense` (:class:`DefenseContract`); import it from
:mod:`invertkit.core.testing.contracts`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from invertkit.core.errors import CapabilityError
from invertkit.core.interfaces.capability import ALL, Capabilities
from invertkit.core.interfaces.defense import Defense, DefenseContext
from invertkit.core.interfaces.target import TargetModel
from invertkit.core.testing.checks import (
    QUERY_CAPABILITIES,
    C,
    _check_answer,
    _float_outputs,
    _images,
    _OneThread,
    access_sets,
    ask,
    check_budget,
    contract_settings,
)
from invertkit.core.testing.strategies import capability_sets, make_tiny_target, seeds

__all__ = ["DefenseContract"]


class DefenseContract(_OneThread):
    """Contract of a :class:`~invertkit.core.interfaces.Defense`. Set ``defense_cls`` (and ``configs``)."""

    defense_cls: ClassVar[type[Defense]]
    #: configurations to test with; each test draws one
    configs: ClassVar[Sequence[dict[str, Any]]] = ({},)
    num_classes: ClassVar[int] = 5
    input_shape: ClassVar[tuple[int, int, int]] = (1, 8, 8)

    # -------------------------------------------------------------- overridable fixtures
    def make_defense(self, config: dict[str, Any]) -> Defense:
        return self.defense_cls(dict(config))

    def make_target(self, capabilities: Capabilities | None = None, *, seed: int = 0, budget: int | None = None) -> TargetModel:
        """The undefended target (default: a tiny random :class:`TorchTarget` with these capabilities)."""
        return make_tiny_target(
            seed, capabilities=capabilities, budget=budget, num_classes=self.num_classes, input_shape=self.input_shape
        )

    def make_context(self, seed: int) -> DefenseContext:
        return DefenseContext(seed=seed)

    # -------------------------------------------------------------- helpers
    def _config(self, data: st.DataObject) -> dict[str, Any]:
        return data.draw(st.sampled_from(list(self.configs)), label="config")

    def _defended(self, data: st.DataObject, caps: Capabilities) -> tuple[Defense, TargetModel, TargetModel]:
        defense = self.make_defense(self._config(data))
        target = self.make_target(caps, seed=data.draw(seeds(), label="target seed"))
        return defense, target, defense.apply(target, self.make_context(data.draw(seeds(), label="defense seed")))

    # -------------------------------------------------------------- the contract
    @contract_settings
    @given(data=st.data())
    def test_capabilities_are_a_subset(self, data: st.DataObject) -> None:
        defense = self.make_defense(self._config(data))
        given_caps = data.draw(capability_sets(), label="given")
        left = defense.capabilities(given_caps)
        assert frozenset(left) <= given_caps, f"{defense.name} adds {set(left) - given_caps} to {set(given_caps)}"

    @contract_settings
    @given(data=st.data())
    def test_apply_exposes_declared_capabilities(self, data: st.DataObject) -> None:
        defense, target, defended = self._defended(data, data.draw(access_sets, label="caps"))
        assert isinstance(defended, TargetModel)
        # judged as deployed: what the defense leaves, less `grad` for an API filter (see Defense.granted)
        assert defended.capabilities == frozenset(defense.granted(target.capabilities))
        assert defended.num_classes == target.num_classes
        assert tuple(defended.input_shape) == tuple(target.input_shape)

    @contract_settings
    @given(data=st.data())
    def test_released_outputs_are_valid(self, data: st.DataObject) -> None:
        """Every capability left answers, and answers well: probs are distributions, top-k sorted, ..."""
        _, _, defended = self._defended(data, data.draw(access_sets, label="caps"))
        x = _images(data, defended)
        for cap in (c for c in QUERY_CAPABILITIES + (C.WEIGHTS,) if c in defended.capabilities):
            _check_answer(defended, cap, ask(defended, cap, x), x.shape[0])
        if C.PROBS in defended.capabilities or C.LOGITS in defended.capabilities:
            lp = defended.log_probs(x)
            assert tuple(lp.shape) == (x.shape[0], defended.num_classes) and bool((lp <= 1e-5).all())

    @contract_settings
    @given(data=st.data())
    def test_removed_capabilities_raise(self, data: st.DataObject) -> None:
        _, _, defended = self._defended(data, data.draw(access_sets, label="caps"))
        x = _images(data, defended)
        for cap in sorted(ALL - defended.capabilities - {C.GRAD}, key=lambda c: c.value):
            before = defended.queries
            with pytest.raises(CapabilityError):
                ask(defended, cap, x)
            assert defended.queries == before, f"a refused '{cap.value}' call was counted as a query"
        if C.GRAD not in defended.capabilities:
            xg = x.clone().requires_grad_(True)
            for cap in (c for c in QUERY_CAPABILITIES if c in defended.capabilities):
                for t in _float_outputs(ask(defended, cap, xg)):
                    assert not t.requires_grad, f"'{cap.value}' carries gradients although 'grad' was removed"

    @contract_settings
    @given(data=st.data())
    def test_gradients_flow_when_kept(self, data: st.DataObject) -> None:
        defense, _, defended = self._defended(data, data.draw(access_sets, label="caps"))
        if C.GRAD not in defended.capabilities or C.PROBS not in defended.capabilities:
            return
        x = _images(data, defended).clone().requires_grad_(True)
        p = defended.probs(x)
        w = torch.linspace(-1.0, 1.0, p.shape[1], device=p.device)
        (p * w).sum().backward()
        assert x.grad is not None and bool(torch.isfinite(x.grad).all()), f"{defense.name}: no finite gradient"

    @contract_settings
    @given(
        data=st.data(),
        budget=st.integers(min_value=0, max_value=12),
        calls=st.lists(st.tuples(st.integers(0, 63), st.integers(1, 4)), max_size=8),
    )
    def test_budget_is_respected(self, data: st.DataObject, budget: int, calls: list[tuple[int, int]]) -> None:
        caps = data.draw(access_sets, label="caps") | {C.PROBS, C.TOPK, C.LABEL}
        _, _, defended = self._defended(data, caps)
        methods = [c for c in QUERY_CAPABILITIES if c in defended.capabilities]
        if not methods:
            return
        check_budget(defended, methods, budget, calls)

    @contract_settings
    @given(data=st.data())
    def test_deterministic_given_seed(self, data: st.DataObject) -> None:
        config = self._config(data)
        caps = data.draw(access_sets, label="caps") | {C.PROBS, C.TOPK, C.LABEL}
        target_seed, seed = data.draw(seeds(), label="target seed"), data.draw(seeds(), label="defense seed")
        x = _images(data, self.make_target(caps, seed=target_seed))

        def answers() -> list[Tensor]:
            defended = self.make_defense(config).apply(self.make_target(caps, seed=target_seed), self.make_context(seed))
            out: list[Tensor] = []
            for _ in range(2):  # a sequence of queries, not just the first one
                for cap in (c for c in (C.PROBS, C.TOPK, C.LABEL) if c in defended.capabilities):
                    a = ask(defended, cap, x)
                    out.extend(a if isinstance(a, tuple) else (a,))
            return out

        first, second = answers(), answers()
        assert len(first) == len(second)
        for a, b in zip(first, second):
            assert torch.equal(a, b), "the same DefenseContext seed gave different answers"

