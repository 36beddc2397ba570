"""The bundled defenses: the contract for each, and the specific promises each one makes."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from invertkit.core.errors import CapabilityError
from invertkit.core.interfaces.capability import ACCESS_LEVELS, LABEL_ONLY, TOP_K, Capabilities, Capability
from invertkit.core.interfaces.defense import Defense, DefenseContext, OutputDefense
from invertkit.core.plugins import load_plugins
from invertkit.core.testing.contracts import DefenseContract
from invertkit.core.testing.strategies import capability_sets, image_batches, make_tiny_target, prob_batches, seeds
from invertkit.plugins.defenses.gaussian_noise import FLOOR, GaussianNoise
from invertkit.plugins.defenses.label_only import LabelOnly
from invertkit.plugins.defenses.none import NoDefense
from invertkit.plugins.defenses.rounding import Rounding
from invertkit.plugins.defenses.topk import TopK

C = Capability
DEFENSES: dict[str, type[Defense]] = {
    "none": NoDefense,
    "rounding": Rounding,
    "top-k": TopK,
    "gaussian-noise": GaussianNoise,
    "label-only": LabelOnly,
}
CONFIGS: dict[str, list[dict[str, Any]]] = {
    "none": [{}],
    "rounding": [{}, {"decimals": 0}, {"decimals": 1}, {"decimals": 6}],
    "top-k": [{}, {"k": 2}, {"k": 3}, {"k": 50}],
    "gaussian-noise": [{}, {"sigma": 0.0}, {"sigma": 2.0, "clip": 1.0}, {"sigma": 0.1, "clip": 0.0}],
    "label-only": [{}],
}

fast = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
gen = torch.Generator().manual_seed(0)


def top2(values: Tensor) -> tuple[Tensor, Tensor]:
    s = torch.sort(values, dim=1, descending=True).values
    return s[:, 0], s[:, 1]



# ------------------------------------------------------------------------------------ contracts
def _contract(name: str, cls: type[Defense]) -> type[DefenseContract]:
    """``DefenseContract`` over ``cls`` and its CONFIGS, named ``Test<Name>Contract`` (``top-k``: TestTopKContract)."""
    title = "".join(w.capitalize() for w in name.split("-"))
    return type(f"Test{title}Contract", (DefenseContract,),
                {"defense_cls": cls, "configs": CONFIGS[name], "__module__": __name__})


# one contract class per bundled defense: TestNoneContract, TestRoundingContract, TestTopKContract, ...
globals().update({c.__name__: c for c in (_contract(name, cls) for name, cls in DEFENSES.items())})


def test_entry_points_register_the_five_defenses() -> None:
    plugins = load_plugins(allow=",".join(DEFENSES), block="")
    assert not plugins.failures(), [(f.name, f.error) for f in plugins.failures()]
    assert list(plugins.registry["defense"]) == sorted(DEFENSES)
    for name, cls in DEFENSES.items():
        assert plugins.get("defense", name) is cls
        assert cls.name == name and cls.summary and cls.gradient in ("exact", "straight-through", "none")
        assert cls.paper == "" if name == "none" else cls.paper.startswith("https://")
        for field in cls.Config.model_fields.values():
            assert field.description, f"{name}: undocumented config field"


@fast
@given(given_caps=capability_sets(), name=st.sampled_from(sorted(DEFENSES)), data=st.data())
def test_defended_capabilities_are_a_subset_of_undefended(given_caps: Capabilities, name: str, data: st.DataObject) -> None:
    defense = DEFENSES[name](data.draw(st.sampled_from(CONFIGS[name])))
    left = defense.capabilities(given_caps)
    assert left <= given_caps
    target = make_tiny_target(data.draw(seeds()), capabilities=given_caps)
    defended = defense.apply(target, DefenseContext(seed=1))
    assert defended.capabilities <= target.capabilities
    if isinstance(defense, OutputDefense):
        assert not defended.capabilities & {C.LOGITS, C.FEATURES, C.WEIGHTS}


# ------------------------------------------------------------------------------------ rounding
@fast
@given(p=prob_batches(), decimals=st.integers(0, 6))
def test_rounding_rows_are_exact_multiples_summing_to_one(p: Tensor, decimals: int) -> None:
    total = 10**decimals
    q = Rounding({"decimals": decimals}).transform(p.double(), gen)
    units = q * total
    assert bool((q >= 0).all())
    assert torch.allclose(units, units.round(), atol=1e-6, rtol=0), "values off the 10**-decimals grid"
    assert bool((units.round().sum(dim=1) == total).all()), "rows do not sum to exactly one"
    # Hamilton rounding moves every value by less than one unit
    assert bool(((q - p.double() / p.double().sum(1, keepdim=True)).abs() < 1.0 / total + 1e-9).all())
    q32 = Rounding({"decimals": decimals}).transform(p, gen)
    assert q32.dtype == torch.float32
    assert torch.allclose(q32.double(), q, atol=1e-7, rtol=0)
    assert torch.allclose(q32.sum(dim=1), torch.ones(p.shape[0]), atol=1e-5)


@fast
@given(p=prob_batches(), decimals=st.integers(0, 6))
def test_rounding_keeps_the_label_beyond_one_unit_of_margin(p: Tensor, decimals: int) -> None:
    unit = 10.0**-decimals
    q = Rounding({"decimals": decimals}).transform(p, gen)
    first, second = top2(p.double())
    clear = (first - second) > unit + 1e-6
    assert torch.equal(q.argmax(dim=1)[clear], p.argmax(dim=1)[clear])


@fast
@given(p=prob_batches())
def test_rounding_to_zero_decimals_is_a_one_hot_of_a_top_class(p: Tensor) -> None:
    q = Rounding({"decimals": 0}).transform(p, gen)
    assert bool(((q == 0) | (q == 1)).all()) and bool((q.sum(dim=1) == 1).all())
    assert torch.equal(p.gather(1, q.argmax(dim=1, keepdim=True)), p.max(dim=1, keepdim=True).values)


def test_rounding_example() -> None:
    p = torch.tensor([[0.334, 0.333, 0.333], [0.6666, 0.1667, 0.1667], [0.115, 0.125, 0.76]])
    q = Rounding({"decimals": 1}).transform(p, gen)
    # naive rounding would give 0.3+0.3+0.3 and 0.7+0.2+0.2: not distributions
    expected = torch.tensor([[0.4, 0.3, 0.3], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]])
    assert torch.allclose(q, expected, atol=1e-7), q


@fast
@given(seed=seeds(), x=image_batches((1, 8, 8)), decimals=st.integers(0, 3))
def test_rounding_gradient_is_straight_through(seed: int, x: Tensor, decimals: int) -> None:
    w = torch.linspace(-1.0, 2.0, 5)
    # an adaptive attacker (holds the weights, must pass the filter): BPDA, the identity backward
    defended = Rounding({"decimals": decimals}).apply(make_tiny_target(seed), DefenseContext(seed=0, adaptive=True))
    assert C.GRAD not in Rounding({"decimals": decimals}).apply(make_tiny_target(seed)).capabilities  # as deployed
    xd = x.clone().requires_grad_(True)
    q = defended.probs(xd)
    (q * w).sum().backward()
    reference = make_tiny_target(seed)
    xr = x.clone().requires_grad_(True)
    p = reference.probs(xr)
    (p * w).sum().backward()
    assert torch.allclose(q.detach(), Rounding({"decimals": decimals}).transform(p.detach(), gen), atol=1e-7)
    assert xd.grad is not None and xr.grad is not None
    assert torch.allclose(xd.grad, xr.grad, atol=1e-7), "the gradient is not the undefended one"
    assert float(xr.grad.abs().sum()) > 0


@fast
@given(seed=seeds(), x=image_batches((1, 8, 8)), decimals=st.integers(0, 3))
def test_rounding_applies_to_topk_access_too(seed: int, x: Tensor, decimals: int) -> None:
    """A target with top-k but no probs: the released top-k is the rounded vector's, not the raw one."""
    total = 10**decimals
    defended = Rounding({"decimals": decimals}).apply(make_tiny_target(seed, capabilities=TOP_K))
    assert defended.capabilities == TOP_K
    values, indices = defended.topk(x, 5)
    units = values.double() * total
    assert torch.allclose(units, units.round(), atol=1e-4 * max(1, total / 100), rtol=0)
    assert bool((units.round().sum(dim=1) == total).all())
    reference = make_tiny_target(seed).probs(x)
    expected = Rounding({"decimals": decimals}).transform(reference, gen)
    assert torch.allclose(expected.gather(1, indices), values, atol=1e-7)
    assert torch.equal(defended.label(x), expected.argmax(dim=1))


# ------------------------------------------------------------------------------------ top-k
@fast
@given(p=prob_batches(), k=st.integers(1, 14))
def test_topk_keeps_exactly_the_top_k_support(p: Tensor, k: int) -> None:
    q = TopK({"k": k}).transform(p, gen)
    kept = q > 0
    assert torch.equal(kept.sum(dim=1), torch.clamp((p > 0).sum(dim=1), max=k)), "wrong support size"
    for row_p, row_kept in zip(p, kept):
        if (~row_kept).any():
            assert float(row_p[row_kept].min()) >= float(row_p[~row_kept].max()), "dropped a larger confidence"
    assert torch.allclose(q.sum(dim=1), torch.ones(p.shape[0]), atol=1e-5)
    # the kept confidences keep their ratios: q = p / (sum of the kept p)
    mass = torch.where(kept, p, torch.zeros_like(p)).sum(dim=1, keepdim=True)
    assert torch.allclose(torch.where(kept, q * mass, p), p, atol=1e-6, rtol=1e-5)
    assert torch.equal(p.gather(1, q.argmax(dim=1, keepdim=True)), p.max(dim=1, keepdim=True).values)


# ------------------------------------------------------------------------------------ label-only
@fast
@given(seed=seeds(), x=image_batches((1, 8, 8)), level=st.sampled_from(sorted(ACCESS_LEVELS)))
def test_label_only_label_is_the_undefended_argmax(seed: int, x: Tensor, level: str) -> None:
    target = make_tiny_target(seed, capabilities=ACCESS_LEVELS[level])
    defended = LabelOnly().apply(target)
    assert defended.capabilities <= LABEL_ONLY
    if C.LABEL in defended.capabilities:
        assert torch.equal(defended.label(x), make_tiny_target(seed).probs(x).argmax(dim=1))
    for cap_call in (defended.probs, lambda v: defended.topk(v, 2), defended.logits):
        with pytest.raises(CapabilityError):
            cap_call(x)


@fast
@given(given_caps=capability_sets())
def test_label_only_leaves_at_most_the_label(given_caps: Capabilities) -> None:
    left = LabelOnly().capabilities(given_caps)
    assert left <= LABEL_ONLY and left <= given_caps
    assert left == (given_caps & LABEL_ONLY)


# ------------------------------------------------------------------------------------ gaussian noise
@fast
@given(
    p=prob_batches(),
    sigma=st.floats(0.0, 3.0),
    clip=st.floats(0.0, 4.0),
    seed=seeds(),
)
def test_gaussian_noise_keeps_the_label_beyond_its_margin(p: Tensor, sigma: float, clip: float, seed: int) -> None:
    defense = GaussianNoise({"sigma": sigma, "clip": clip})
    q = defense.transform(p, torch.Generator().manual_seed(seed))
    logp = torch.log(p.double().clamp_min(FLOOR))
    first, second = top2(logp)
    clear = (first - second) > 2 * clip * sigma + 1e-4
    assert torch.equal(q.argmax(dim=1)[clear], p.argmax(dim=1)[clear])
    # the noise is bounded: log q - log p is a constant (the normaliser) plus at most clip*sigma per class
    shift = torch.log(q.double()) - logp
    ok = q > 1e-30
    for row_shift, row_ok in zip(shift, ok):
        s = row_shift[row_ok]
        assert float(s.max() - s.min()) <= 2 * clip * sigma + 1e-3


@fast
@given(p=prob_batches(), seed=seeds())
def test_gaussian_noise_is_noise_and_is_seeded(p: Tensor, seed: int) -> None:
    defense = GaussianNoise({"sigma": 1.0, "clip": 3.0})
    q1 = defense.transform(p, torch.Generator().manual_seed(seed))
    q2 = defense.transform(p, torch.Generator().manual_seed(seed))
    assert torch.equal(q1, q2)
    assert torch.allclose(q1.sum(dim=1), torch.ones(p.shape[0]), atol=1e-5)
    quiet = GaussianNoise({"sigma": 0.0}).transform(p, torch.Generator().manual_seed(seed))
    assert torch.allclose(quiet, p, atol=1e-6)
    spread = p.clamp_min(FLOOR)
    movable = (spread > 1e-3).sum(dim=1) >= 2  # rows where noise on log-confidences must show
    if bool(movable.any()):
        assert not torch.allclose(q1[movable], p[movable], atol=1e-4)


@fast
@given(seed=seeds(), x=image_batches((1, 8, 8)), defense_seed=seeds())
def test_gaussian_noise_gradient_is_exact(seed: int, x: Tensor, defense_seed: int) -> None:
    defense = GaussianNoise({"sigma": 1.0, "clip": 3.0})
    defended = defense.apply(make_tiny_target(seed), DefenseContext(seed=defense_seed, adaptive=True))
    state = defended.generator.get_state()  # type: ignore[attr-defined]
    w = torch.linspace(-1.0, 2.0, 5)
    xd = x.clone().requires_grad_(True)
    q = defended.probs(xd)
    (q * w).sum().backward()
    replay = torch.Generator()
    replay.set_state(state)
    xr = x.clone().requires_grad_(True)
    q_ref = defense.transform(make_tiny_target(seed).probs(xr), replay)
    (q_ref * w).sum().backward()
    assert torch.equal(q.detach(), q_ref.detach())
    assert xd.grad is not None and xr.grad is not None
    assert torch.allclose(xd.grad, xr.grad, atol=1e-6), "gradient is not the one through the noisy vector"


# ------------------------------------------------------------------------ the contract itself can fail
class _Leaky(OutputDefense):
    """Claims to remove probs but leaves everything."""

    name = "leaky"
    removes = frozenset({C.PROBS})

    def capabilities(self, given: Capabilities) -> Capabilities:
        return frozenset(given) | {C.PROBS}

    def transform(self, probs: Tensor, generator: torch.Generator) -> Tensor:
        return probs


class _Unnormalised(OutputDefense):
    name = "unnormalised"

    def transform(self, probs: Tensor, generator: torch.Generator) -> Tensor:
        return probs * 0.5


class _GlobalRandom(OutputDefense):
    """Draws its noise from the global RNG instead of the given generator: not reproducible."""

    name = "global-random"

    def transform(self, probs: Tensor, generator: torch.Generator) -> Tensor:
        return torch.softmax(torch.log(probs.clamp_min(1e-12)) + torch.randn(probs.shape), dim=1)


class _LeakyContract(DefenseContract):
    defense_cls = _Leaky


class _UnnormalisedContract(DefenseContract):
    defense_cls = _Unnormalised


class _GlobalRandomContract(DefenseContract):
    defense_cls = _GlobalRandom


@pytest.mark.parametrize(
    ("contract", "test"),
    [
        (_LeakyContract, "test_capabilities_are_a_subset"),
        (_UnnormalisedContract, "test_released_outputs_are_valid"),
        (_GlobalRandomContract, "test_deterministic_given_seed"),
    ],
)
def test_the_defense_contract_catches_broken_defenses(contract: type[DefenseContract], test: str) -> None:
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        getattr(contract(), test)()


class _SameObject(NoDefense):
    """Sanity: a correct defense passes when its contract methods are called directly."""

    name: ClassVar[str] = "same"


def test_the_defense_contract_passes_a_correct_defense() -> None:
    class _Ok(DefenseContract):
        defense_cls = _SameObject

    for test in ("test_capabilities_are_a_subset", "test_released_outputs_are_valid", "test_deterministic_given_seed"):
        getattr(_Ok(), test)()
