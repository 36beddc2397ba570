"""C2FMI: the attack contract (with a public split in the context), exact query accounting, the inverse network's
input transform, the attack's cache, and quality on the tiny digits scenario through black-box scores, top-k
access and the rounding defense."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

from invertkit.core.errors import UsageError
from invertkit.core.interfaces import ACCESS_LEVELS, Restricted, TorchTarget
from invertkit.core.interfaces.attack import AttackContext
from invertkit.core.plugins import get_plugins
from invertkit.core.testing.contracts import AttackContract
from invertkit.core.testing.strategies import make_tiny_target
from invertkit.core.testing.tiny import TinyPrior
from invertkit.plugins.attacks.c2fmi import C2FMI, InverseNet
from invertkit.plugins.attacks.random_prior import RandomPrior

from conftest import attack_acc  # noqa: E402

pytest.importorskip("pymoo")

TINY = {"inverse_hidden": 16, "inverse_epochs": 2, "embed_epochs": 1, "coarse_steps": 2, "generations": 3,
        "candidates": 6, "keep": 4, "popsize": 8}


def tiny_context(n: int = 24, seed: int = 0) -> AttackContext:
    g = torch.Generator().manual_seed(seed)
    return AttackContext(public_images=torch.rand(n, 1, 8, 8, generator=g),
                         public_labels=torch.randint(5, 8, (n,), generator=g), plugins=get_plugins())


class TestC2FMIContract(AttackContract):
    attack_cls = C2FMI
    config: ClassVar[dict[str, Any]] = TINY

    def make_attack(self) -> C2FMI:
        return C2FMI(dict(self.config), tiny_context())


def test_needs_public_data() -> None:
    target = make_tiny_target(0, capabilities=ACCESS_LEVELS["black-box"], num_classes=4, input_shape=(1, 8, 8))
    with pytest.raises(UsageError):
        C2FMI(TINY)(target, torch.tensor([0]), prior=TinyPrior((1, 8, 8), 8, 0), seed=0)
    assert target.queries == 0


@pytest.mark.parametrize(("samples", "generations"), [(1, 2), (2, 4)])
def test_query_count_is_exact(samples: int, generations: int) -> None:
    target = make_tiny_target(0, capabilities=ACCESS_LEVELS["black-box"], num_classes=4, input_shape=(1, 8, 8))
    labels = torch.arange(4).repeat_interleave(samples)
    cfg = {**TINY, "generations": generations}
    result = C2FMI(cfg, tiny_context(30))(target, labels, prior=TinyPrior((1, 8, 8), 8, 0), seed=0)
    rows = len(labels)
    # the public images once (inverse network), the stage-1 candidates, the extended population, the trials
    expected = 30 + rows * cfg["candidates"] + rows * (cfg["popsize"] - cfg["keep"]) + generations * rows * cfg["popsize"]
    assert result.queries == target.queries == expected


def test_cached_inverse_network_is_charged_again(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from invertkit.core.zoo.model_cache import derived_cache

    monkeypatch.setenv("INVERTKIT_CACHE", str(tmp_path))

    class Scenario:
        keys = {"target": "tiny-target"}

    def run() -> int:
        target = make_tiny_target(0, capabilities=ACCESS_LEVELS["black-box"], num_classes=4, input_shape=(1, 8, 8))
        ctx = tiny_context(20)
        ctx = AttackContext(public_images=ctx.public_images, public_labels=ctx.public_labels, plugins=ctx.plugins,
                            cache=derived_cache(Scenario(), target, "none"))
        result = C2FMI({**TINY, "generations": 1}, ctx)(target, torch.tensor([0, 1]), prior=TinyPrior((1, 8, 8), 8, 0),
                                                        seed=0)
        return result.queries

    first, second = run(), run()
    assert first == second == 20 + 2 * 6 + 2 * 4 + 1 * 2 * 8
    assert len(list(tmp_path.rglob("c2fmi-inverse-*.safetensors"))) == 1


def test_inverse_input_transform() -> None:
    net = InverseNet(4, 3, hidden=8, trunc=2)
    p = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.0, 0.0, 1.0, 0.0]])
    x = net.encode(p)
    assert torch.allclose(x.norm(dim=1), torch.ones(2))
    assert (x[0, 2:] == 0).all() and x[0, 0] > x[0, 1] > 0  # the top-2, log-scaled, order kept
    assert x[1, 2] == pytest.approx(1.0)  # a released one-hot stays one-hot
    assert net(p).shape == (2, 3)


# ------------------------------------------------------------------------------------------- quality
def white_box(scenario) -> TorchTarget:  # noqa: ANN001
    return TorchTarget(scenario.target_net, num_classes=5, input_shape=(1, 8, 8), name="tiny-cnn")


def identities(samples: int = 5) -> torch.Tensor:
    return torch.arange(5).repeat_interleave(samples)


@pytest.fixture(scope="module")
def random_prior_baseline(scenario) -> float:  # noqa: ANN001
    accs = [attack_acc(scenario, RandomPrior()(white_box(scenario), identities(), prior=scenario.prior, seed=s))
            for s in range(10)]
    return sum(accs) / len(accs)


@pytest.mark.parametrize("access", ["black-box", "top-k", "rounding"])
def test_c2fmi_beats_the_random_prior(scenario, random_prior_baseline: float, access: str) -> None:  # noqa: ANN001
    # measured (inverse width 256, embedding 10 epochs, 20 generations, 5 per identity, seeds 0 and 1): acc@1
    # 0.40 / 0.40 through black-box scores, top-k access and rounding (2 decimals), against 0.184
    from invertkit.core.zoo.scenario import defense_context

    plugins = get_plugins()
    target = Restricted(white_box(scenario), ACCESS_LEVELS["top-k" if access == "top-k" else "black-box"])
    if access == "rounding":
        target = plugins.get("defense", "rounding")({}).apply(target, defense_context(scenario, plugins, seed=0))
    ctx = AttackContext(public_images=scenario.split.public[0], public_labels=scenario.split.public[1], plugins=plugins)
    cfg = {"inverse_hidden": 256, "embed_epochs": 10, "generations": 20}
    result = C2FMI(cfg, ctx)(target, identities(), prior=scenario.prior, seed=0)
    assert attack_acc(scenario, result) >= random_prior_baseline + 0.10


# ------------------------------------------------------------------------------------------- query budgets
PLANNED = {**TINY, "generations": 40}


def run_planned(budget: int | None, cfg: dict[str, Any] = PLANNED) -> tuple[Any, Any]:  # noqa: ANN401
    target = make_tiny_target(0, capabilities=ACCESS_LEVELS["black-box"], num_classes=4, input_shape=(1, 8, 8),
                              budget=budget)
    return C2FMI(cfg, tiny_context(40))(target, torch.arange(4), prior=TinyPrior((1, 8, 8), 8, 0), seed=0), target


def test_c2fmi_plans_within_a_tenfold_smaller_budget() -> None:
    # measured: 1,360 queries unbudgeted (40 public images, then 4 rows x (6 candidates + 4 extended + 40 x 8
    # trials)); under a budget of 136, the 40 public images and per row the setup and 1 DE generation (112)
    free, _ = run_planned(None)
    assert free.queries == 40 + 4 * (6 + 4 + 40 * 8) and not free.extras["exhausted"]
    assert (free.extras["planned_public"], free.extras["planned_generations"]) == (40, 40)
    budget = free.queries // 10
    result, target = run_planned(budget)
    assert result.queries == target.queries <= budget and not target.exhausted
    assert result.extras["exhausted"] is True
    assert result.extras["planned_public"] <= budget // 2  # the inverse network's data: at most budget_share
    assert result.extras["planned_popsize"] == 8 and 0 < result.extras["planned_generations"] < 40
    assert result.images.shape == free.images.shape and bool(torch.isfinite(result.images).all())
    # a share too small for the DE's setup: the coarse stage's most confident scored candidate
    tiny, target = run_planned(40)
    assert tiny.queries <= 40 and tiny.extras["planned_popsize"] == 0 and tiny.extras["exhausted"] is True
    assert bool(torch.isfinite(tiny.images).all()) and bool(torch.isfinite(tiny.scores).all())
    # enough for the whole run: the run is the unbudgeted one
    roomy, _ = run_planned(free.queries)
    assert roomy.queries == free.queries and torch.equal(roomy.images, free.images)
    assert not roomy.extras["exhausted"]


def test_c2fmi_caches_the_inverse_network_per_planned_size(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from invertkit.core.zoo.model_cache import derived_cache

    monkeypatch.setenv("INVERTKIT_CACHE", str(tmp_path))

    class Scenario:
        keys = {"target": "tiny-target"}

    def run(budget: int | None) -> Any:  # noqa: ANN401
        target = make_tiny_target(0, capabilities=ACCESS_LEVELS["black-box"], num_classes=4, input_shape=(1, 8, 8),
                                  budget=budget)
        ctx = tiny_context(20)
        ctx = AttackContext(public_images=ctx.public_images, public_labels=ctx.public_labels, plugins=ctx.plugins,
                            cache=derived_cache(Scenario(), target, "none"))
        return C2FMI({**TINY, "generations": 1}, ctx)(target, torch.tensor([0, 1]), prior=TinyPrior((1, 8, 8), 8, 0),
                                                      seed=0)

    full, cut, again = run(None), run(20), run(20)
    assert full.extras["planned_public"] == 20 and cut.extras["planned_public"] == again.extras["planned_public"] == 10
    assert cut.queries == again.queries <= 20  # the re-used network is charged its 10 queries again
    assert len(list(tmp_path.rglob("c2fmi-inverse-*.safetensors"))) == 2  # one per planned size


@pytest.mark.parametrize("budget", [0, 10, 40, 100])
def test_c2fmi_ends_with_what_it_has_when_refused(monkeypatch, budget: int) -> None:  # noqa: ANN001
    """Planning switched off, the wrapper's refusal (in the public images, the candidates, the extended population
    or a generation) ends the phase it hits and the attack still returns a result, within the budget."""
    import invertkit.plugins.attacks.c2fmi as c2fmi

    monkeypatch.setattr(c2fmi, "affordable", lambda target, n, **_: n)
    monkeypatch.setattr(c2fmi, "budget_left", lambda target: 10**9)
    target = make_tiny_target(0, capabilities=ACCESS_LEVELS["black-box"], num_classes=4, input_shape=(1, 8, 8),
                              budget=budget)
    result = C2FMI(PLANNED, tiny_context(30))(target, torch.arange(4), prior=TinyPrior((1, 8, 8), 8, 0), seed=0)
    assert target.exhausted and result.extras["exhausted"] is True
    assert result.queries == target.queries <= budget
    assert len(result) == 4 and bool(torch.isfinite(result.images).all())
