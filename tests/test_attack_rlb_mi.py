"""RLB-MI (plugins/attacks/rlb_mi.py): the environment's state update, reward and query accounting, the attack
contract, determinism, that the agent learns, planning within a query budget (every identity its episodes) and
a refused query, and quality against random-prior on the tiny digits scenario through a black-box (probs)
target."""

from __future__ import annotations

import math
import random
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from invertkit.core import progress
from invertkit.core.interfaces import ACCESS_LEVELS, Restricted, TorchTarget
from invertkit.core.interfaces.capability import BLACK_BOX
from invertkit.core.testing.contracts import AttackContract, TinyPrior
from invertkit.core.testing.strategies import make_tiny_target
from invertkit.plugins.attacks.random_prior import RandomPrior
from invertkit.plugins.attacks.rlb_mi import RLBMI, latent_env_class

from conftest import attack_acc  # noqa: E402

#: a CPU-sized agent: the official algorithm with small networks, batches and few episodes
SMALL: dict[str, Any] = {"hidden": 16, "batch_size": 4, "learning_starts": 4}


@pytest.fixture(autouse=True, scope="module")
def _quiet():
    progress.set_quiet(True)
    yield
    progress.set_quiet(False)


class TestRLBMIContract(AttackContract):
    attack_cls = RLBMI
    config: ClassVar[dict[str, Any]] = {**SMALL, "max_episodes": 8}


# ------------------------------------------------------------------------------------------ environment
class Recorder:
    """A scorer that remembers what it was asked: log p_y = -|z|_1, p_y = exp of it, margin = p_y - 0.5."""

    def __init__(self) -> None:
        self.asked: list[np.ndarray] = []

    def __call__(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.asked.append(z.copy())
        logp = -np.abs(z).sum(1)
        return logp, np.exp(logp), np.exp(logp) - 0.5


def make_env(scorer: Recorder, state: np.ndarray, **kw: Any):  # noqa: ANN201
    options = {"alpha": 0.0, "max_step": 1, "weights": (2.0, 2.0, 8.0), "floor": 1e-7, **kw}
    return latent_env_class()(scorer, lambda: state.copy(), len(state), **options)


def test_reward_is_the_official_weighted_sum_and_alpha_zero_asks_once() -> None:
    scorer = Recorder()
    env = make_env(scorer, np.array([3.0, -3.0], dtype=np.float32))
    obs, _ = env.reset()
    assert np.array_equal(obs, [3.0, -3.0])
    a = np.array([0.1, -0.2], dtype=np.float32)
    nxt, reward, terminated, truncated, info = env.step(a)
    assert np.array_equal(nxt, a) and terminated and not truncated
    assert len(scorer.asked) == 1 and scorer.asked[0].shape == (1, 2)  # s' = a: one query for both scores
    logp = -0.3
    margin = math.exp(logp) - 0.5
    assert reward == pytest.approx(2 * logp + 2 * logp + 8 * math.log(margin), rel=1e-5)
    assert info["confidence"] == pytest.approx(math.exp(logp), rel=1e-5)


def test_state_update_mixes_state_and_action_and_floors_the_margin() -> None:
    scorer = Recorder()
    s0 = np.array([1.0, -1.0], dtype=np.float32)
    env = make_env(scorer, s0, alpha=0.5, max_step=2)
    env.reset()
    a = np.array([-1.0, 0.6], dtype=np.float32)
    s1, r1, done1, _, _ = env.step(a)
    assert np.allclose(s1, 0.5 * s0 + 0.5 * a) and not done1
    assert len(scorer.asked) == 1 and scorer.asked[0].shape == (2, 2)  # the state image and the action image
    assert np.allclose(scorer.asked[0], np.stack([s1, a]))
    logp_s, logp_a = -float(np.abs(s1).sum()), -float(np.abs(a).sum())
    margin = max(1e-7, math.exp(logp_s) - 0.5)  # below zero here: floored
    assert r1 == pytest.approx(2 * logp_s + 2 * logp_a + 8 * math.log(margin), rel=1e-5)
    s2, _, done2, _, _ = env.step(a)
    assert np.allclose(s2, 0.5 * s1 + 0.5 * a) and done2  # max_step = 2: done after the second step
    assert env.action_space.low.min() == -1.0 and env.action_space.high.max() == 1.0


# ------------------------------------------------------------------------------------ query accounting
@pytest.mark.parametrize(("alpha", "max_step", "per_episode"), [(0.0, 1, 2), (0.0, 2, 3), (0.3, 2, 5)])
def test_queries_per_identity(alpha: float, max_step: int, per_episode: int) -> None:
    # per episode: each step asks about the new state and the action (one image when alpha = 0), then one test
    # image; per identity, whatever the number of rows it has
    episodes = 5
    target = make_tiny_target(0, capabilities=BLACK_BOX, num_classes=4, input_shape=(1, 8, 8))
    labels = torch.tensor([0, 2, 2])
    result = RLBMI({**SMALL, "max_episodes": episodes, "alpha": alpha, "max_step": max_step})(
        target, labels, prior=TinyPrior(image_shape=(1, 8, 8), latent_dim=8, seed=0), seed=0)
    assert result.queries == target.queries == 2 * episodes * per_episode
    assert torch.equal(result.labels, labels)
    # the two rows of identity 2 are its two best test images, best first
    assert float(result.scores[1]) >= float(result.scores[2])
    assert not torch.equal(result.images[1], result.images[2])


# ------------------------------------------------------------------------------------------- learning
def test_the_agent_learns() -> None:
    # On the contract's tiny target and prior, identity 1's test confidence rises over 400 episodes: measured
    # first-tenth mean 0.83 / 0.82 / 0.87 -> last-tenth 0.90 / 0.90 / 0.91 (seeds 0-2, 32-unit nets, batch 32)
    target = make_tiny_target(0, capabilities=BLACK_BOX, num_classes=4, input_shape=(1, 8, 8))
    prior = TinyPrior(image_shape=(1, 8, 8), latent_dim=8, seed=0)
    result = RLBMI({"max_episodes": 400, "hidden": 32, "batch_size": 32})(target, torch.tensor([1]), prior=prior,
                                                                            seed=0)
    first, last = result.extras["test_confidence_first_tenth"][1], result.extras["test_confidence_last_tenth"][1]
    assert last > first + 0.03, (first, last)
    assert result.extras["best_confidence"][1] == pytest.approx(float(result.scores[0]))


# ------------------------------------------------------------------------------------ on the tiny digits
QUALITY: dict[str, Any] = {"max_episodes": 200, "hidden": 64, "batch_size": 64, "learning_starts": 64}


def black_box(scenario) -> Restricted:  # noqa: ANN001
    net = TorchTarget(scenario.target_net, num_classes=5, input_shape=(1, 8, 8), name="tiny-cnn")
    return Restricted(net, ACCESS_LEVELS["black-box"])


def test_rlb_mi_beats_the_random_prior(scenario) -> None:  # noqa: ANN001
    # measured (200 episodes per identity, 64-unit nets, batch 64, 5 per identity, 2,000 queries per identity):
    # rlb-mi acc@1 0.32 / 0.32 / 0.32 / 0.28 (seeds 0-3) against the random-prior mean of 0.184 over seeds 0-9
    labels = torch.arange(5).repeat_interleave(5)
    baseline = np.mean([attack_acc(scenario, RandomPrior()(black_box(scenario), labels, prior=scenario.prior,
                                                           seed=s)) for s in range(10)])
    accs = []
    for s in (0, 1):
        target = black_box(scenario)
        result = RLBMI(QUALITY)(target, labels, prior=scenario.prior, seed=s)
        assert result.queries == target.queries == 5 * 200 * 2
        accs.append(attack_acc(scenario, result))
    assert np.mean(accs) >= baseline + 0.08, (accs, baseline)


def test_seed_determines_the_images(scenario) -> None:  # noqa: ANN001
    labels = torch.arange(5).repeat_interleave(2)
    cfg = {**SMALL, "max_episodes": 12}

    def run(seed: int):  # noqa: ANN202
        return RLBMI(cfg)(black_box(scenario), labels, prior=scenario.prior, seed=seed)

    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a.images, b.images) and torch.equal(a.scores, b.scores) and torch.equal(a.latents, b.latents)
    assert not torch.equal(a.images, c.images)
    # the global generators SB3 seeds (Python's, NumPy's) are put back
    random.seed(0)
    np.random.seed(0)
    before = (random.random(), np.random.rand())
    random.seed(0)
    np.random.seed(0)
    run(5)
    assert (random.random(), np.random.rand()) == before


def test_a_budget_ten_times_smaller_gives_every_identity_its_episodes() -> None:
    # 20 episodes of 2 queries per identity, 4 identities: 160 queries unbudgeted (as before this change); a
    # budget of 16 plans 2 episodes for each identity, where unplanned identity 0 would have taken all 16
    prior = TinyPrior(image_shape=(1, 8, 8), latent_dim=8, seed=0)
    labels = torch.tensor([0, 1, 2, 3, 3])
    cfg = {**SMALL, "max_episodes": 20}
    free = RLBMI(cfg)(make_tiny_target(0, capabilities=BLACK_BOX, num_classes=4, input_shape=(1, 8, 8)), labels,
                      prior=prior, seed=0)
    assert free.queries == 4 * 20 * 2 and free.extras["exhausted"] is False
    assert "planned_episodes_per_identity" not in free.extras
    target = make_tiny_target(0, capabilities=BLACK_BOX, num_classes=4, input_shape=(1, 8, 8), budget=16)
    result = RLBMI(cfg)(target, labels, prior=prior, seed=0)
    ex = result.extras
    assert result.queries == target.queries == 16 and not target.exhausted  # planned: nothing refused
    assert ex["exhausted"] is True
    assert ex["planned_episodes_per_identity"] == 2 and ex["planned_queries_per_identity"] == 4
    assert ex["episodes_per_identity"] == {0: 2, 1: 2, 2: 2, 3: 2}
    # every identity, the last included, returns tested latents (confidence > 0; untested ones score 0)
    assert bool((result.scores > 0).all()), result.scores
    assert all(ex["best_confidence"][y] > 0 for y in range(4))


def test_a_refused_query_ends_the_run_with_what_it_has() -> None:
    # a budget the attack cannot see (the wrapped target's; the view says None) is not planned for. 5 episodes
    # of 2 queries each (alpha 0, max_step 1: a step and a test) = 10 per identity; a budget of 13 ends
    # identity 2's search in its second episode: identity 0 keeps its best test latent, identity 2 its one test
    # latent, identity 3 is never searched (a random latent, confidence 0), and the record says so
    hidden = make_tiny_target(0, capabilities=BLACK_BOX, num_classes=4, input_shape=(1, 8, 8), budget=13)
    target = Restricted(hidden, BLACK_BOX)
    labels = torch.tensor([0, 2, 3])
    result = RLBMI({**SMALL, "max_episodes": 5})(target, labels, prior=TinyPrior(image_shape=(1, 8, 8), latent_dim=8,
                                                                                  seed=0), seed=0)
    assert target.budget is None and hidden.exhausted and result.extras["exhausted"] is True
    assert hidden.queries <= 13 and result.queries == target.queries == hidden.queries
    assert result.images.shape == (3, 1, 8, 8) and bool(torch.isfinite(result.images).all())
    assert float(result.scores[0]) > 0.0  # identity 0 finished its search
    assert float(result.scores[1]) > 0.0  # identity 2 tested one latent before the refusal
    assert float(result.scores[2]) == 0.0  # identity 3 was never searched
