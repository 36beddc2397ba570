"""Contract tests for plugins: subclass one, set a class attribute, and pytest runs the whole contract.

In the style of zarr's ``zarr.testing.store``: the base classes are *not* collected by pytest (their names do
not start with ``Test``); a subclass whose name does is::

    from invertkit.core.testing.contracts import DefenseContract

    class TestMyDefense(DefenseContract):
        defense_cls = MyDefense
        configs = [{}, {"strength": 0.9}]   # optional: each test draws one of these

    class TestMyAttack(AttackContract):
        attack_cls = MyAttack
        config = {"steps": 3}               # something that runs in well under a second

    class TestMyTarget(TargetContract):
        def make_target(self):
            return MyTarget(...)

Override the ``make_*`` methods to supply your own targets, priors or defense contexts. Every property
test uses hypothesis with at most :data:`MAX_EXAMPLES` examples and no deadline, so the contracts stay fast
on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from math import prod
from typing import Any, ClassVar

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from invertkit.core.errors import CapabilityError, QueryBudgetExceeded, ShapeError
from invertkit.core.interfaces.attack import Attack
from invertkit.core.interfaces.capability import ACCESS_LEVELS, ALL, Capabilities, Capability
from invertkit.core.interfaces.defense import Defense, DefenseContext
from invertkit.core.interfaces.prior import Prior
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.interfaces.target import TargetModel
from invertkit.core.testing.strategies import capability_sets, image_batches, make_tiny_target, seeds

__all__ = [
    "MAX_EXAMPLES",
    "QUERY_CAPABILITIES",
    "AttackContract",
    "DefenseContract",
    "TargetContract",
    "TinyPrior",
    "ask",
    "assert_distributions",
    "torch_threads",
]

C = Capability

MAX_EXAMPLES = 25

#: capabilities answered by a method that takes a batch (and costs one query per row)
QUERY_CAPABILITIES: tuple[Capability, ...] = (C.LOGITS, C.PROBS, C.TOPK, C.LABEL, C.FEATURES)

#: the capabilities that make an attack send queries to the target
QUERYING: Capabilities = frozenset({C.LOGITS, C.PROBS, C.TOPK, C.LABEL})

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


class TinyPrior(Prior):
    """A fixed random linear decoder + sigmoid: latent ``(latent_dim,)`` -> images in ``(0, 1)``."""

    name = "tiny-prior"

    def __init__(self, image_shape: tuple[int, int, int] = (1, 8, 8), latent_dim: int = 8, seed: int = 0) -> None:
        self.latent_shape = (int(latent_dim),)
        self.image_shape = tuple(int(s) for s in image_shape)  # type: ignore[assignment]
        g = torch.Generator().manual_seed(int(seed))
        self.decoder = nn.Linear(int(latent_dim), prod(self.image_shape))
        with torch.no_grad():
            self.decoder.weight.copy_(torch.randn(self.decoder.weight.shape, generator=g) / latent_dim**0.5)
            self.decoder.bias.zero_()
        self.decoder.requires_grad_(False)

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return torch.sigmoid(self.decoder(z)).view(-1, *self.image_shape)


# ------------------------------------------------------------------------------------------ defenses
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
        defended.budget = budget
        defended.reset_queries()
        for which, n in calls:
            cap = methods[which % len(methods)]
            x = torch.rand((n, *defended.input_shape)).to(defended.device)
            before = defended.queries
            if before + n > budget:
                with pytest.raises(QueryBudgetExceeded):
                    ask(defended, cap, x)
                assert defended.queries == before, "a refused query was counted"
            else:
                ask(defended, cap, x)
                assert defended.queries == before + n, f"'{cap.value}' on {n} rows counted {defended.queries - before}"
            assert defended.queries <= budget

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


# -------------------------------------------------------------------------------------------- attacks
class AttackContract(_OneThread):
    """Contract of an :class:`~invertkit.core.interfaces.Attack`. Set ``attack_cls`` and a fast ``config``.

    An attack that queries (its ``requires`` contains logits, probs, topk or label) must let the target's
    :class:`~invertkit.core.errors.QueryBudgetExceeded` through; an attack that instead stops early by design
    overrides :meth:`test_budget_below_need_raises`.
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
        needed = self.run_attack(self.make_target()).queries
        if needed == 0:
            pytest.skip("the attack sent no query with this config")
        target = self.make_target(budget=needed - 1)
        with pytest.raises(QueryBudgetExceeded):
            self.run_attack(target)
        assert target.queries <= needed - 1


# -------------------------------------------------------------------------------------------- targets
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
        methods = [c for c in QUERY_CAPABILITIES if c in target.capabilities]
        if C.PROBS in target.capabilities or C.LOGITS in target.capabilities:
            methods.append("log_probs")  # type: ignore[arg-type]
        if not methods:
            return
        target.budget = budget
        target.reset_queries()
        for which, n in calls:
            method = methods[which % len(methods)]
            x = torch.rand((n, *target.input_shape)).to(target.device)
            call = (lambda: target.log_probs(x)) if method == "log_probs" else (lambda: ask(target, method, x))
            before = target.queries
            if before + n > budget:
                with pytest.raises(QueryBudgetExceeded):
                    call()
                assert target.queries == before, "the refused call was counted"
            else:
                call()
                assert target.queries == before + n, f"{n} rows counted as {target.queries - before} queries"
            assert target.queries <= budget
