"""The contract of a :class:`~invertkit.core.interfaces.TargetModel` (:class:`TargetContract`); import it from
:mod:`invertkit.core.testing.contracts`."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from invertkit.core.errors import CapabilityError, ShapeError
from invertkit.core.interfaces.capability import ALL
from invertkit.core.interfaces.target import TargetModel
from invertkit.core.testing.checks import (
    QUERY_CAPABILITIES,
    BudgetCall,
    C,
    _check_answer,
    _float_outputs,
    _images,
    _OneThread,
    ask,
    check_budget,
    contract_settings,
)

__all__ = ["TargetContract"]


class TargetContract(_OneThread):
    """Contract of a :class:`~invertkit.core.interfaces.TargetModel`. Implement :meth:`make_target`.

    ``make_target`` must return a fresh target (``queries == 0``) without a budget; the budget test sets one.
    """

    def make_target(self) -> TargetModel:  # pragma: no cover - the subclass supplies it
        raise NotImplementedError("a TargetContract subclass implements make_target()")

    def test_missing_capabilities_raise(self) -> None:
        target = self.make_target()
        x = torch.rand((2, *target.input_shape)).to(target.device)
        for cap in sorted(ALL - target.capabilities - {C.GRAD}, key=lambda c: c.value):
            with pytest.raises(CapabilityError):
                ask(target, cap, x)
            assert target.queries == 0, f"a refused '{cap.value}' call was counted"
        if C.LOGITS not in target.capabilities and C.PROBS not in target.capabilities:
            with pytest.raises(CapabilityError):
                target.log_probs(x)

    @contract_settings
    @given(data=st.data())
    def test_bad_shapes_raise(self, data: st.DataObject) -> None:
        target = self.make_target()
        methods = [c for c in QUERY_CAPABILITIES if c in target.capabilities]
        if not methods:
            return
        c, h, w = target.input_shape
        n = data.draw(st.integers(1, 3), label="n")
        wrong = data.draw(
            st.sampled_from(
                [
                    (n, c, h),  # 3-d
                    (n, c * h * w),  # flat
                    (c, h, w),  # no batch dimension
                    (n, c + 1, h, w),
                    (n, c, h + 1, w),
                    (n, c, h, max(1, w - 1)) if w > 1 else (n, c, h, w + 2),
                    (n, 1, c, h, w),  # 5-d
                ]
            ),
            label="shape",
        )
        cap = data.draw(st.sampled_from(methods), label="method")
        for x in (torch.rand(wrong).to(target.device), torch.rand((n, c, h, w)).tolist()):
            with pytest.raises(ShapeError):
                ask(target, cap, x)  # type: ignore[arg-type]
            assert target.queries == 0, "a malformed query was counted"

    @contract_settings
    @given(data=st.data())
    def test_answers_are_consistent(self, data: st.DataObject) -> None:
        """Valid outputs; ``label`` is the argmax of ``probs`` (and of ``logits``); ``topk`` is the top of ``probs``."""
        target = self.make_target()
        x = _images(data, target)
        n = x.shape[0]
        got = {cap: ask(target, cap, x, k=2) for cap in QUERY_CAPABILITIES + (C.WEIGHTS,) if cap in target.capabilities}
        for cap, out in got.items():
            _check_answer(target, cap, out, n)
        assert target.queries == n * sum(1 for c in got if c is not C.WEIGHTS)
        if C.PROBS in got and C.LABEL in got:
            p, y = got[C.PROBS], got[C.LABEL]
            assert torch.equal(p.gather(1, y.view(-1, 1)).view(-1), p.max(dim=1).values), "label != argmax(probs)"
        if C.LOGITS in got and C.LABEL in got:
            z, y = got[C.LOGITS], got[C.LABEL]
            assert bool((z.gather(1, y.view(-1, 1)).view(-1) >= z.max(dim=1).values - 1e-4).all()), "label != argmax(logits)"
        if C.LOGITS in got and C.PROBS in got:
            assert torch.allclose(torch.softmax(got[C.LOGITS], dim=1), got[C.PROBS], atol=1e-5)
        if C.PROBS in got and C.TOPK in got:
            values, indices = got[C.TOPK]
            assert torch.allclose(values, got[C.PROBS].gather(1, indices), atol=1e-6)
            assert torch.allclose(values, torch.topk(got[C.PROBS], values.shape[1], dim=1).values, atol=1e-6)
        if C.PROBS in target.capabilities or C.LOGITS in target.capabilities:
            lp = target.log_probs(x)
            ref = got[C.PROBS] if C.PROBS in got else torch.softmax(got[C.LOGITS], dim=1)
            assert torch.allclose(lp.exp(), ref, atol=1e-5)

    @contract_settings
    @given(data=st.data())
    def test_gradients_only_with_grad(self, data: st.DataObject) -> None:
        target = self.make_target()
        x = _images(data, target).clone().requires_grad_(True)
        with_grad = C.GRAD in target.capabilities
        for cap in (c for c in QUERY_CAPABILITIES if c in target.capabilities):
            out = ask(target, cap, x)
            for t in _float_outputs(out):
                assert t.requires_grad == with_grad, (
                    f"'{cap.value}' output requires_grad={t.requires_grad} with grad "
                    f"{'exposed' if with_grad else 'not exposed'}"
                )

    @contract_settings
    @given(
        budget=st.integers(min_value=0, max_value=12),
        calls=st.lists(st.tuples(st.integers(0, 63), st.integers(1, 4)), max_size=10),
    )
    def test_budget_never_exceeded(self, budget: int, calls: list[tuple[int, int]]) -> None:
        target = self.make_target()
        methods: list[BudgetCall] = [c for c in QUERY_CAPABILITIES if c in target.capabilities]
        if C.PROBS in target.capabilities or C.LOGITS in target.capabilities:
            methods.append("log_probs")
        if not methods:
            return
        check_budget(target, methods, budget, calls)
