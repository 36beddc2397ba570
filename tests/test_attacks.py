"""The bundled attacks: the attack contract for each, then quality, query accounting and refusals on the tiny
digits scenario (a white-box TorchTarget over its trained CNN, 5 identities, 1x8x8 images)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from invertkit.core.errors import CapabilityError
from invertkit.core.interfaces import ACCESS_LEVELS, Restricted, TargetModel, TorchTarget
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.testing.contracts import AttackContract
from invertkit.plugins.attacks.gan_search import GMI
from invertkit.plugins.attacks.mi_face import MIFace, total_variation
from invertkit.plugins.attacks.nes import NES
from invertkit.plugins.attacks.random_prior import RandomPrior

from conftest import attack_acc  # noqa: E402


# ----------------------------------------------------------------------------------------- contracts
class TestRandomPriorContract(AttackContract):
    attack_cls = RandomPrior
    config: ClassVar[dict[str, Any]] = {"batch_size": 1}


class TestMIFaceContract(AttackContract):
    attack_cls = MIFace
    config: ClassVar[dict[str, Any]] = {"iterations": 6, "patience": 3}


class TestGMIContract(AttackContract):
    attack_cls = GMI
    config: ClassVar[dict[str, Any]] = {"iterations": 4}


class TestNESContract(AttackContract):
    attack_cls = NES
    config: ClassVar[dict[str, Any]] = {"iterations": 3, "pairs": 2}


# ------------------------------------------------------------------------------------------- helpers
SAMPLES = 5  # reconstructions per identity in the quality tests


def white_box(scenario) -> TorchTarget:  # noqa: ANN001
    return TorchTarget(scenario.target_net, num_classes=5, input_shape=(1, 8, 8), name="tiny-cnn")


def black_box(scenario, budget: int | None = None) -> Restricted:  # noqa: ANN001
    return Restricted(white_box(scenario), ACCESS_LEVELS["black-box"], budget=budget)


def identities(samples: int = SAMPLES) -> Tensor:
    return torch.arange(5).repeat_interleave(samples)


def target_nll(scenario, images: Tensor, labels: Tensor) -> Tensor:  # noqa: ANN001
    with torch.no_grad():
        return F.cross_entropy(scenario.target_net(images), labels, reduction="none")


@pytest.fixture(scope="module")
def random_prior_baseline(scenario) -> float:  # noqa: ANN001
    """Mean attack acc@1 of ``random-prior`` over 10 seeds (about 0.18 on the tiny scenario)."""
    accs = [
        attack_acc(scenario, RandomPrior()(white_box(scenario), identities(), prior=scenario.prior, seed=s))
        for s in range(10)
    ]
    return sum(accs) / len(accs)


# ------------------------------------------------------------------------------------------- quality
def test_gmi_beats_the_random_prior(scenario, random_prior_baseline: float) -> None:  # noqa: ANN001
    # measured (seed 0, 150 iterations, 5 per identity): gmi acc@1 0.36-0.40 against a random-prior mean of
    # 0.184 over seeds 0-9, whether the scenario was trained on 1 or 2 threads
    labels = identities()
    result = GMI({"iterations": 150})(white_box(scenario), labels, prior=scenario.prior, seed=0)
    acc = attack_acc(scenario, result)
    assert acc >= random_prior_baseline + 0.10, (acc, random_prior_baseline)
    # and on the target itself: the identity loss went down from where the latents started (random-prior
    # with the same seed decodes GMI's starting latents, up to GMI's clipping to [-1, 1])
    start = RandomPrior()(white_box(scenario), labels, prior=scenario.prior, seed=0)
    assert float(target_nll(scenario, result.images, labels).mean()) < 0.7 * float(
        target_nll(scenario, start.images, labels).mean())


def test_nes_beats_the_random_prior(scenario, random_prior_baseline: float) -> None:  # noqa: ANN001
    # measured (20 iterations, 4 pairs, 5 per identity): nes acc@1 0.28 (seed 0) and 0.36 (seed 1), mean 0.32,
    # against the random-prior mean of 0.184
    labels = identities()
    accs = [
        attack_acc(scenario, NES({"iterations": 20, "pairs": 4})(black_box(scenario), labels,
                                                                        prior=scenario.prior, seed=s))
        for s in (0, 1)
    ]
    assert sum(accs) / 2 >= random_prior_baseline + 0.06, (accs, random_prior_baseline)


# ------------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize(
    ("make", "black"),
    [(lambda: GMI({"iterations": 15}), False), (lambda: NES({"iterations": 4, "pairs": 3}), True),
     (lambda: RandomPrior(), False)],
    ids=["gmi", "nes", "random-prior"],
)
def test_seed_determines_the_images(scenario, make, black: bool) -> None:  # noqa: ANN001
    def run(seed: int) -> AttackResult:
        target = black_box(scenario) if black else white_box(scenario)
        return make()(target, identities(2), prior=scenario.prior, seed=seed)

    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a.images, b.images) and torch.equal(a.scores, b.scores)
    assert a.seed == 3 and c.seed == 4
    assert not torch.equal(a.images, c.images)


# ---------------------------------------------------------------------------------- query accounting
@pytest.mark.parametrize(("iterations", "pairs", "samples"), [(3, 2, 1), (5, 4, 2)])
def test_nes_query_count_is_exact(scenario, iterations: int, pairs: int, samples: int) -> None:  # noqa: ANN001
    inner = white_box(scenario)
    target = Restricted(inner, ACCESS_LEVELS["black-box"])
    labels = identities(samples)
    result = NES({"iterations": iterations, "pairs": pairs})(target, labels, prior=scenario.prior, seed=0)
    expected = iterations * 2 * pairs * len(labels)
    assert result.queries == expected
    assert target.queries == expected
    assert inner.queries == expected  # the access level forwards every row, and nothing else is asked


@pytest.mark.parametrize("shortfall", [1, 7, 100])
def test_nes_stops_at_the_budget(scenario, shortfall: int, monkeypatch) -> None:  # noqa: ANN001
    """A budget is a stopping rule: with its planning switched off (it thinks it can afford every iteration), NES
    ends with what it has at the wrapper's refusal, within the budget, and the target says so."""
    import invertkit.plugins.attacks.nes as nes

    monkeypatch.setattr(nes, "affordable", lambda target, n, **_: n)
    iterations, pairs, labels = 4, 3, identities(1)
    per_iteration = 2 * pairs * len(labels)
    needed = iterations * per_iteration
    budget = needed - shortfall
    target = black_box(scenario, budget=budget)
    result = NES({"iterations": iterations, "pairs": pairs})(target, labels, prior=scenario.prior, seed=0)
    assert len(result) == len(labels) and target.exhausted
    assert target.queries <= budget
    # each iteration asks for all its rows at once: the iterations that fitted were answered, none after
    assert target.queries == (budget // per_iteration) * per_iteration


def test_nes_runs_within_an_exact_budget(scenario) -> None:  # noqa: ANN001
    labels = identities(1)
    target = black_box(scenario, budget=2 * 2 * 2 * len(labels))
    result = NES({"iterations": 2, "pairs": 2})(target, labels, prior=scenario.prior, seed=0)
    assert result.queries == target.queries == target.budget
    assert not result.extras["exhausted"] and result.extras["planned_iterations"] == 2


@pytest.mark.parametrize("optimizer", ["adam", "nevergrad:TwoPointsDE"])
def test_nes_plans_within_a_tenfold_smaller_budget(scenario, optimizer: str) -> None:  # noqa: ANN001
    # measured: 800 queries unbudgeted (20 iterations x 2 x 4 pairs x 5 latents); under a budget of 80, 2
    # iterations of each latent's share (80 queries), the wrapper refusing nothing
    labels, cfg = identities(1), {"iterations": 20, "pairs": 4, "optimizer": optimizer}
    free = NES(cfg)(black_box(scenario), labels, prior=scenario.prior, seed=0)
    assert free.queries == 20 * 2 * 4 * len(labels) and not free.extras["exhausted"]
    budget = free.queries // 10
    target = black_box(scenario, budget=budget)
    result = NES(cfg)(target, labels, prior=scenario.prior, seed=0)
    assert result.queries == target.queries <= budget and not target.exhausted
    assert result.extras["exhausted"] is True and result.extras["planned_iterations"] == 2
    assert result.images.shape == free.images.shape and bool(torch.isfinite(result.images).all())
    # below one iteration of every pair: one iteration of the pairs that fit; below one pair, the start
    small = NES(cfg)(black_box(scenario, budget=23), labels, prior=scenario.prior, seed=0)
    assert (small.extras["planned_iterations"], small.extras["planned_pairs"], small.queries) == (1, 2, 20)
    none = NES(cfg)(black_box(scenario, budget=9), labels, prior=scenario.prior, seed=0)
    assert none.queries == 0 and none.extras["exhausted"] is True and bool(torch.isfinite(none.images).all())


def test_random_prior_makes_no_query(scenario) -> None:  # noqa: ANN001
    # a budget of 0: any single query would raise
    target = Restricted(white_box(scenario), ACCESS_LEVELS["label-only"], budget=0)
    result = RandomPrior()(target, identities(), prior=scenario.prior, seed=0)
    assert result.queries == 0 and target.queries == 0
    assert len(result) == 5 * SAMPLES and torch.equal(result.labels, identities())


# -------------------------------------------------------------------------------------------- refusals
def test_gmi_refuses_a_black_box_target(scenario) -> None:  # noqa: ANN001
    target = black_box(scenario)
    with pytest.raises(CapabilityError, match="grad"):
        GMI({"iterations": 2})(target, identities(1), prior=scenario.prior, seed=0)
    assert target.queries == 0


def test_nes_refuses_a_label_only_target(scenario) -> None:  # noqa: ANN001
    target = Restricted(white_box(scenario), ACCESS_LEVELS["label-only"])
    with pytest.raises(CapabilityError, match="probs"):
        NES({"iterations": 2})(target, identities(1), prior=scenario.prior, seed=0)
    assert target.queries == 0


# ---------------------------------------------------------------------------------------------- MI-Face
class Recording(Restricted):
    """Full access to the wrapped target; remembers the range of every image it is asked about."""

    def __init__(self, inner: TargetModel) -> None:
        super().__init__(inner, inner.capabilities)
        self.lo, self.hi = float("inf"), -float("inf")

    def _probs(self, x: Tensor) -> Tensor:
        self.lo, self.hi = min(self.lo, float(x.detach().min())), max(self.hi, float(x.detach().max()))
        return super()._probs(x)


def test_mi_face_stops_early_stays_in_range_and_raises_confidence(scenario) -> None:  # noqa: ANN001
    # On the trained CNN the all-zeros start is confidently class 1 (p = 0.999 >= gamma) and the other classes'
    # softmax is saturated (p < 1e-3), so the paper's lambda = 0.1 barely moves them; lambda = 100 does.
    # Measured: confidences at x0 [7e-9, 0.999, 8e-5, 1e-4, 9e-4] rise to [0.97, 0.999, 0.9997, 0.9994,
    # 0.9999], 12-13 steps per sample on average.
    iterations, gamma = 300, 0.99
    labels = torch.arange(5)
    target = Recording(white_box(scenario))
    attack = MIFace({"iterations": iterations, "patience": 5, "lr": 100.0, "confidence": gamma})
    result = attack(target, labels, prior=None, seed=0)
    assert result.extras["iterations_run"] < iterations
    # every image the attack submitted, and every image it returned, is a valid image
    assert 0.0 <= target.lo and target.hi <= 1.0, (target.lo, target.hi)
    net = scenario.target_net
    with torch.no_grad():
        p = torch.softmax(net(result.images), dim=1)[torch.arange(5), labels]
        p0 = torch.softmax(net(torch.zeros(5, 1, 8, 8)), dim=1)[torch.arange(5), labels]
    # the attack's score is its cost at the returned image, so nothing was clipped away after the fact
    cost = 1.0 - p + attack.config.tv_weight * total_variation(result.images)
    assert torch.allclose(result.scores, -cost, atol=1e-5)
    started_done = p0 >= gamma
    assert bool(started_done.any()) and not bool(started_done.all())
    # an identity the start already reaches gamma for: returned as it started, after one evaluation
    assert torch.equal(result.images[started_done], torch.zeros_like(result.images[started_done]))
    # the others: strictly more confident, by a lot
    assert bool((p[~started_done] > p0[~started_done]).all()), (p0, p)
    assert bool((p[~started_done] > 0.5).all()), p
    assert result.queries == target.queries > 0


def test_mi_face_patience_shortens_the_run(scenario) -> None:  # noqa: ANN001
    # with the paper's lambda the saturated identities stop improving at once: patience ends them
    labels = torch.arange(5)
    short = MIFace({"iterations": 200, "patience": 3})(white_box(scenario), labels, prior=None, seed=0)
    longer = MIFace({"iterations": 200, "patience": 10})(white_box(scenario), labels, prior=None, seed=0)
    assert short.extras["iterations_run"] < longer.extras["iterations_run"] < 200
    assert short.queries < longer.queries


# ----------------------------------------------------------------------------------------- GMI batching
def test_gmi_batching_does_not_change_results(scenario) -> None:  # noqa: ANN001
    labels = identities(2)
    cfg = {"iterations": 20}
    whole = GMI(cfg)(white_box(scenario), labels, prior=scenario.prior, seed=5)
    split = GMI({**cfg, "batch_size": 2})(white_box(scenario), labels, prior=scenario.prior, seed=5)
    odd = GMI({**cfg, "batch_size": 3})(white_box(scenario), labels, prior=scenario.prior, seed=5)
    for other in (split, odd):
        assert torch.equal(other.labels, whole.labels)
        assert torch.allclose(other.images, whole.images, atol=1e-4, rtol=0)
        assert torch.allclose(other.latents, whole.latents, atol=1e-4, rtol=0)
        assert other.queries == whole.queries == 20 * len(labels)
    # the run did move the latents (so the comparison above is not between two copies of the start)
    start = RandomPrior()(white_box(scenario), labels, prior=scenario.prior, seed=5)
    assert (whole.latents - start.latents.clamp(-1, 1)).abs().max() > 0.1


@pytest.mark.parametrize("options", [{"antithetic": False}, {"optimizer": "sgd", "lr": 0.5},
                                     {"optimizer": "nevergrad:TwoPointsDE"}, {"optimizer": "nevergrad:CMA"}])
def test_nes_variants_query_the_same_and_beat_their_start(scenario, options) -> None:  # noqa: ANN001
    """Antithetic or not, a step on the estimate or a nevergrad optimiser behind it: 2 * pairs queries per
    latent per iteration, through the black-box view, and the identity loss falls from the start."""
    iterations, pairs, labels = 6, 4, identities(2)
    target = black_box(scenario)
    result = NES({"iterations": iterations, "pairs": pairs, **options})(target, labels, prior=scenario.prior, seed=0)
    assert target.queries == iterations * 2 * pairs * len(labels)
    with torch.no_grad():
        start = scenario.prior.decode(scenario.prior.sample_latent(len(labels), torch.Generator().manual_seed(0)))
        before = torch.nn.functional.nll_loss(torch.log_softmax(scenario.target_net(start), 1), labels, reduction="sum")
        after = torch.nn.functional.nll_loss(torch.log_softmax(scenario.target_net(result.images), 1), labels,
                                             reduction="sum")
    assert float(after) < float(before)


def test_nes_names_an_unknown_optimizer() -> None:
    from invertkit.core.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'CMA'"):
        NES({"optimizer": "nevergrad:CMAA"})
    with pytest.raises(ConfigError, match="adam"):
        NES({"optimizer": "lbfgs"})
