"""MIRROR (mirror-b, mirror-w): the attack contract, exact query accounting, and quality on the tiny digits
scenario through the access each attack is for (black-box scores, top-k access, the rounding defense; white-box
for mirror-w)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

from invertkit.core.interfaces import ACCESS_LEVELS, Restricted, TorchTarget
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.testing.contracts import AttackContract
from invertkit.core.testing.strategies import make_tiny_target
from invertkit.core.testing.tiny import TinyPrior
from invertkit.plugins.attacks.mirror import MirrorB, MirrorW, StyleSpace, adjust_lr
from invertkit.plugins.attacks.random_prior import RandomPrior

from conftest import attack_acc  # noqa: E402

pytest.importorskip("pymoo")


class TestMirrorBContract(AttackContract):
    attack_cls = MirrorB
    config: ClassVar[dict[str, Any]] = {"pool": 64, "population": 8, "generations": 3, "min_score": 0.999}


class TestMirrorWContract(AttackContract):
    attack_cls = MirrorW
    config: ClassVar[dict[str, Any]] = {"pool": 64, "iterations": 4}


def white_box(scenario) -> TorchTarget:  # noqa: ANN001
    return TorchTarget(scenario.target_net, num_classes=5, input_shape=(1, 8, 8), name="tiny-cnn")


def restricted(scenario, access: str) -> Restricted:  # noqa: ANN001
    return Restricted(white_box(scenario), ACCESS_LEVELS[access])


def identities(samples: int = 5) -> torch.Tensor:
    return torch.arange(5).repeat_interleave(samples)


@pytest.fixture(scope="module")
def random_prior_baseline(scenario) -> float:  # noqa: ANN001
    """Mean acc@1 of random-prior over 10 seeds (0.184 on the tiny scenario)."""
    accs = [attack_acc(scenario, RandomPrior()(white_box(scenario), identities(), prior=scenario.prior, seed=s))
            for s in range(10)]
    return sum(accs) / len(accs)


FAST_B = {"pool": 2000, "population": 50, "generations": 10}


def defended(scenario, name: str):  # noqa: ANN001, ANN201
    from invertkit.core.plugins import get_plugins
    from invertkit.core.zoo.scenario import defense_context

    plugins = get_plugins()
    return plugins.get("defense", name)({}).apply(restricted(scenario, "black-box"),
                                                  defense_context(scenario, plugins, seed=0))


@pytest.mark.parametrize("access", ["black-box", "top-k", "rounding"])
def test_mirror_b_beats_the_random_prior(scenario, random_prior_baseline: float, access: str) -> None:  # noqa: ANN001
    # measured (pool 2000, population 50, 10 generations, 5 per identity, seeds 0 and 1): acc@1 0.40 / 0.40
    # through black-box scores and top-k access, 0.40 / 0.36 under rounding (2 decimals), against 0.184
    target = defended(scenario, "rounding") if access == "rounding" else restricted(scenario, access)
    assert C.PROBS in target.capabilities or access == "top-k"
    result = MirrorB(FAST_B)(target, identities(), prior=scenario.prior, seed=0)
    assert attack_acc(scenario, result) >= random_prior_baseline + 0.10


def test_mirror_w_beats_the_random_prior(scenario, random_prior_baseline: float) -> None:  # noqa: ANN001
    # measured (pool 2000, 100 steps, 5 per identity, seeds 0 and 1): acc@1 0.40 / 0.40 against 0.184
    result = MirrorW({"pool": 2000, "iterations": 100})(white_box(scenario), identities(), prior=scenario.prior, seed=0)
    assert attack_acc(scenario, result) >= random_prior_baseline + 0.10


@pytest.mark.parametrize(("population", "generations", "samples"), [(6, 3, 1), (10, 4, 2)])
def test_mirror_b_query_count_is_exact(population: int, generations: int, samples: int) -> None:
    target = make_tiny_target(0, capabilities=ACCESS_LEVELS["black-box"], num_classes=4, input_shape=(1, 8, 8))
    labels = torch.arange(4).repeat_interleave(samples)
    cfg = {"pool": 100, "population": population, "generations": generations, "min_score": 0.999999}
    result = MirrorB(cfg)(target, labels, prior=TinyPrior((1, 8, 8), 8, 0), seed=0)
    # the pool once (every class per query), then population - 1 children per run per generation it ran
    expected = 100 + sum(g * (population - 1) for g in result.extras["generations"])
    assert result.queries == target.queries == expected
    assert all(0 <= g <= generations for g in result.extras["generations"])


def test_mirror_b_stops_at_min_score() -> None:
    target = make_tiny_target(0, capabilities=ACCESS_LEVELS["black-box"], num_classes=4, input_shape=(1, 8, 8))
    result = MirrorB({"pool": 100, "population": 6, "generations": 5, "min_score": 1e-6})(
        target, torch.arange(4), prior=TinyPrior((1, 8, 8), 8, 0), seed=0)
    assert result.extras["generations"] == [0, 0, 0, 0] and result.queries == 100


def test_mirror_w_queries_pool_plus_one_per_row_per_step() -> None:
    target = make_tiny_target(0, num_classes=4, input_shape=(1, 8, 8))
    result = MirrorW({"pool": 50, "iterations": 7})(target, torch.tensor([0, 1, 1]), prior=TinyPrior((1, 8, 8), 8, 0),
                                                     seed=0)
    assert result.queries == 50 + 7 * 3


class _StylePrior(TinyPrior):
    has_style_space = True


def test_p_space_bound_and_inverse() -> None:
    # a latent prior: the latent is its own p space, bounded to mean +- p_std_ce std of the pool (about +-1)
    space = StyleSpace(TinyPrior((1, 8, 8), 8, 0), 1.0, 1.0, 256)
    pool = space.sample(4000, torch.Generator().manual_seed(0))
    space.fit_bound(pool)
    clipped = space.clip(pool)
    assert float(pool.abs().max()) > 2.5 and float(clipped.abs().max()) < 1.1
    assert torch.equal(space.to_p(pool), pool)
    # a style-space prior: p = LeakyReLU_5(w) undoes the mapping's LeakyReLU_0.2
    style = StyleSpace(_StylePrior((1, 8, 8), 8, 0), 1.0, 1.0, 256)
    w = torch.randn(100, 8)
    assert torch.allclose(style.from_p(style.to_p(w)), w, atol=1e-6)
    assert torch.allclose(torch.from_numpy(style.from_p_np(style.to_p_np(w.double().numpy()))).float(), w, atol=1e-6)
    assert torch.equal(style.to_p(w)[w < 0], 5 * w[w < 0])


def test_adjust_lr_ramps_up_and_down() -> None:
    assert adjust_lr(0.25, 0, 100) == 0.0
    assert adjust_lr(0.25, 50, 100) == pytest.approx(0.25)
    assert adjust_lr(0.25, 100, 100) == pytest.approx(0.0)
    assert 0 < adjust_lr(0.25, 2, 100) < adjust_lr(0.25, 4, 100) < 0.25


# ------------------------------------------------------------------------------------------- query budgets
PLANNED_B = {"pool": 200, "population": 10, "generations": 6, "min_score": 0.999999}


def run_b(budget: int | None, cfg: dict[str, Any] = PLANNED_B) -> tuple[Any, Any]:  # noqa: ANN401
    target = make_tiny_target(0, capabilities=ACCESS_LEVELS["black-box"], num_classes=4, input_shape=(1, 8, 8),
                              budget=budget)
    return MirrorB(cfg)(target, torch.arange(4), prior=TinyPrior((1, 8, 8), 8, 0), seed=0), target


def test_mirror_b_plans_within_a_tenfold_smaller_budget() -> None:
    # measured: 416 queries unbudgeted (the pool of 200, then 4 runs x 6 generations x 9 children); under a
    # budget of 41, a pool of 20 scored styles and one generation of 5 children per run (40 queries)
    free, _ = run_b(None)
    assert free.queries == 200 + 4 * 6 * 9 and free.extras["generations"] == [6] * 4
    assert not free.extras["exhausted"]
    assert (free.extras["planned_pool"], free.extras["planned_population"], free.extras["planned_generations"]) == (
        200, 10, 6)
    budget = free.queries // 10
    result, target = run_b(budget)
    assert result.queries == target.queries <= budget and not target.exhausted
    assert result.extras["exhausted"] is True
    assert result.extras["planned_pool"] <= budget // 2  # the pool takes at most budget_share (0.5) of it
    assert sum(result.extras["generations"]) > 0  # and the search still ran on the rest
    assert result.images.shape == free.images.shape and bool(torch.isfinite(result.images).all())
    # the budget is given to the search once the pool has what the full search leaves it
    roomy, target = run_b(free.queries)
    assert roomy.queries == free.queries and torch.equal(roomy.images, free.images)
    assert not roomy.extras["exhausted"]


@pytest.mark.parametrize("budget", [0, 3, 50, 250])
def test_mirror_b_ends_with_what_it_has_when_refused(monkeypatch, budget: int) -> None:  # noqa: ANN001
    """Planning switched off (every phase thinks it can afford its full size), the wrapper's refusal ends the
    phase it hits, in the pool or in a generation, and the attack still returns its best, within the budget."""
    import invertkit.plugins.attacks.mirror as mirror

    monkeypatch.setattr(mirror, "affordable", lambda target, n, **_: n)
    monkeypatch.setattr(mirror, "budget_left", lambda target: 10**9)
    result, target = run_b(budget, {**PLANNED_B, "batch_size": 40})
    assert target.exhausted and result.extras["exhausted"] is True
    assert result.queries == target.queries <= budget
    assert len(result) == 4 and bool(torch.isfinite(result.images).all())
