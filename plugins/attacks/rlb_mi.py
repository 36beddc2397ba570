"""RLB-MI: reinforcement-learning-based black-box model inversion (Han et al., "Reinforcement Learning-Based
Black-Box Model Inversion Attacks", CVPR 2023, https://arxiv.org/abs/2304.04625).

Follows the official code, https://github.com/HanGyojin/RLB-MI (``attack.py``: ``inversion``; ``main.py``: the
arguments; ``SAC.py``: the agent; ``run_experiments.sh``: the paper's runs). Black-box (scores): the target is
only asked for its confidence vector.

For each attacked identity ``y`` a soft actor-critic agent of its own searches the prior's latent space. An
episode starts from a state ``s ~ N(0, I)`` (the prior's latent distribution) and takes ``max_step`` steps; at
each, the agent's action ``a`` (in ``[-1, 1]^d``, a tanh-squashed Gaussian policy) moves the state to

    s' = alpha * s + (1 - alpha) * a

and the reward (``attack.py``: ``reward = 2 * score1 + 2 * score2 + 8 * score3``) is

    R = w1 * log p_y(G(s')) + w2 * log p_y(G(a)) + w3 * log max(1e-7, p_y(G(s')) - max_{j != y} p_j(G(s')))

(``p`` the target's released confidences; the episode is done after ``max_step`` steps). After every episode
one test latent is drawn afresh, moved ``max_step`` times by the (stochastic) policy and decoded; its
confidence ``p_y`` is read, and the identity's reconstruction is the test image of highest confidence over all
episodes, the latest on ties (``attack.py``: ``if mean_score >= best_score``). With several rows of ``labels``
for one identity, that identity's rows are its best test images (the first is the official one).

Defaults (the official code's):

* ``max_episodes = 40000``, ``max_step = 1``, ``alpha = 0``: ``run_experiments.sh`` (the paper's runs, VGG16 /
  ResNet-152 / Face.evoLVe) and ``main.py``'s argument defaults (``-max_episodes 40000 -max_step 1 -alpha 0``);
* ``w1, w2, w3 = 2, 2, 8`` and the margin floor ``1e-7``: ``attack.py``;
* the agent (``SAC.py``): two hidden layers of 256 units (``main.py``: ``hidden_size=256``) for the actor and
  both critics, ReLU; ``LR_ACTOR = LR_CRITIC = 5e-4`` (also the entropy coefficient's, as the official
  ``alpha_optimizer``), ``GAMMA = 0.99``, ``TAU = 1e-2``, ``BATCH_SIZE = 256``, ``BUFFER_SIZE = 1e6``; one
  gradient step per environment step once the buffer holds more than ``BATCH_SIZE`` transitions; entropy
  coefficient learned from 1 (``log_alpha = 0``) towards the target entropy ``-dim(A)``; log-std clamped to
  ``[-20, 2]``.

The agent is stable-baselines3's SAC (CPU, seeded per identity from the attack's generator, so a seed gives the
same images) on a gymnasium environment (:func:`latent_env_class`) whose ``step`` asks the target, through the
attacker's view, about the decoded latents; every query is counted. Under a query budget the attack plans its
episodes (below, among the differences); a query the target still refuses (a budget it could not see, e.g. of a
wrapped target) ends the run with what it has: the identity being searched keeps its best test latents so far
(untested random latents, confidence 0, if it had none), the identities after it keep random latents, and
``extras["exhausted"]`` says so.

Queries: ``max_episodes * (2 * max_step + 1)`` per identity in general, ``max_episodes * (max_step + 1)`` when
``alpha = 0`` (the default: 80,000 per identity). CPU cost: one SAC gradient step (batch 256, 256-unit MLPs)
and one or two target queries per step. Measured on mnist-gmi (``bench --matrix mnist``, the ONNX target) on a
shared 2-core machine under load: 60-100 ms an episode, so the default 40,000 episodes cost about an hour per
identity on a CPU; ``-o rlb-mi.max_episodes=5000`` runs the five MNIST identities in about half an hour (a GAN
prior and a target of face size cost far more per query).

Deliberate differences from the official code:

* SB3's SAC rather than ``SAC.py``. The official actor's ``log_pi`` is the *mean* over action dimensions
  (``.mean(1)``) against a target entropy of ``-dim(A)``, so its entropy coefficient only ever decays; SB3 sums
  ``log_pi`` over dimensions (the SAC paper's). The official actor loss uses the first critic, SB3 the minimum of
  both. SB3 samples its warm-up actions (the first ``learning_starts`` steps, before any update) uniformly from
  ``[-1, 1]^d``, the official code from the untrained policy. Network initialisation is SB3's.
* With ``alpha = 0`` the updated state is the action (``s' = a``), so one query answers both the state score and
  the action score; the official code asks the target twice for the same image.
* ``log p`` is read from the target's ``log_probs`` (exact log-softmax where logits are released, else the
  logarithm of the released confidences floored at 1e-12, e.g. behind rounding or top-k).
* The replay buffer holds at most ``max_episodes * max_step`` transitions (the official deque's 1e6 bound is
  never reached by the paper's runs either).
* **Planning within a query budget** (our addition; the paper has no budget). When the target has one
  (``target.budget``, public like any API quota), each identity in turn is given a fair share of what is left of
  it, ``1 / identities left`` (:func:`~invertkit.core.interfaces.access.affordable`), and trains its agent for
  as many whole episodes as that pays for (``max_step * q + 1`` queries an episode, ``q`` = 1 when ``alpha = 0``
  and 2 otherwise), at most ``max_episodes``: a budget 10 times smaller gives every identity about a tenth of its
  episodes, where unplanned the first identities would spend it all and the last keep random latents. What an
  identity leaves unspent goes to those after it. A plan that cut episodes says ``extras["exhausted"]``, with
  ``planned_episodes_per_identity`` and ``planned_queries_per_identity`` (the first identity's share) and
  ``episodes_per_identity``. Without a budget nothing changes (same queries, same images).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import numpy as np
import torch
from pydantic import Field

from invertkit.core import progress
from invertkit.core.errors import InvertkitError, QueryBudgetExceeded
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.access import affordable
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult

#: a latent's score: (log p_y, p_y, p_y - max_{j != y} p_j) for each row of an (n, d) float32 array
Scorer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _rl() -> tuple[Any, Any, Any, Any]:
    """(gymnasium, gymnasium.spaces, stable_baselines3.SAC, BaseCallback), or a one-line install hint."""
    try:
        import gymnasium
        from gymnasium import spaces
        from stable_baselines3 import SAC
        from stable_baselines3.common.callbacks import BaseCallback
    except ImportError:
        raise InvertkitError("the rlb-mi attack needs stable-baselines3 and gymnasium: "
                             "pip install 'invertkit[rl]'") from None
    return gymnasium, spaces, SAC, BaseCallback


@cache
def latent_env_class() -> type:
    """The gymnasium environment of one identity's search (a class made on first use, so that listing the
    plugins imports neither gymnasium nor stable-baselines3).

    ``LatentSearchEnv(score, sample_state, dim, alpha=..., max_step=..., weights=(w1, w2, w3), floor=...)``:
    observations are latents (``(dim,)`` float32), actions are in ``[-1, 1]^dim``; ``reset`` draws the state with
    ``sample_state()``; ``step(a)`` moves the state to ``alpha * s + (1 - alpha) * a``, asks ``score`` about the
    new state and the action (once when they are equal) and returns RLB-MI's reward; the episode terminates
    after ``max_step`` steps. ``queries_per_step`` is what one step costs.
    """
    gymnasium, spaces, _, _ = _rl()

    class LatentSearchEnv(gymnasium.Env):
        metadata: dict[str, Any] = {"render_modes": []}

        def __init__(self, score: Scorer, sample_state: Callable[[], np.ndarray], dim: int, *, alpha: float,
                     max_step: int, weights: tuple[float, float, float], floor: float) -> None:
            super().__init__()
            self.observation_space = spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)
            self.action_space = spaces.Box(-1.0, 1.0, shape=(dim,), dtype=np.float32)
            self.score, self.sample_state = score, sample_state
            self.alpha, self.max_step, self.weights, self.floor = float(alpha), int(max_step), weights, float(floor)
            self.state = np.zeros(dim, dtype=np.float32)
            self.t = 0

        @property
        def queries_per_step(self) -> int:
            return 1 if self.alpha == 0.0 else 2

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):  # noqa: ANN201
            super().reset(seed=seed)
            self.state = np.asarray(self.sample_state(), dtype=np.float32)
            self.t = 0
            return self.state.copy(), {}

        def step(self, action: np.ndarray):  # noqa: ANN201
            a = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
            nxt = (self.alpha * self.state + (1.0 - self.alpha) * a).astype(np.float32)
            if np.array_equal(nxt, a):  # alpha = 0: the state image is the action image, one query
                logp, p, margin = self.score(nxt[None])
                logp_a = logp
            else:
                logp, p, margin = self.score(np.stack([nxt, a]))
                logp_a = logp[1:]
            w1, w2, w3 = self.weights
            reward = w1 * float(logp[0]) + w2 * float(logp_a[0]) + w3 * float(np.log(max(self.floor, float(margin[0]))))
            self.state = nxt
            self.t += 1
            terminated = self.t >= self.max_step
            return nxt.copy(), reward, terminated, False, {"confidence": float(p[0])}

    return LatentSearchEnv


@contextmanager
def _global_rngs_kept() -> Iterator[None]:
    """SB3 seeds Python's, NumPy's and torch's global generators: put them back afterwards."""
    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)


class RLBMI(Attack):
    name = "rlb-mi"
    paper = "https://arxiv.org/abs/2304.04625"
    summary = ("Black-box (scores): a soft actor-critic agent (stable-baselines3) per identity searches the GAN "
               "prior's latent space, rewarded by the target's confidence and margin; best test image kept.")
    requires = frozenset({C.PROBS})

    class Config(AttackConfig):
        max_episodes: int = Field(40000, ge=1, description="episodes per identity (official run_experiments.sh / "
                                                           "main.py: 40000; CPU: a few ms each)")
        max_step: int = Field(1, ge=1, description="steps per episode (official: 1)")
        alpha: float = Field(0.0, ge=0, lt=1, description="state update s' = alpha*s + (1-alpha)*a (official: 0)")
        w1: float = Field(2.0, description="weight of the state score log p_y(G(s')) (official attack.py: 2)")
        w2: float = Field(2.0, description="weight of the action score log p_y(G(a)) (official: 2)")
        w3: float = Field(8.0, description="weight of log(p_y - max other p) of the state image (official: 8)")
        margin_floor: float = Field(1e-7, gt=0, description="the margin is floored here before its log (official: 1e-7)")
        hidden: int = Field(256, ge=1, description="units of each of the two hidden layers of actor and critics "
                                                   "(official main.py: hidden_size=256)")
        lr: float = Field(5e-4, gt=0, description="Adam learning rate of actor, critics and entropy coefficient "
                                                  "(official SAC.py: LR_ACTOR = LR_CRITIC = 5e-4)")
        gamma: float = Field(0.99, ge=0, le=1, description="discount (official: 0.99)")
        tau: float = Field(1e-2, gt=0, le=1, description="soft target-update rate (official: 1e-2)")
        batch_size: int = Field(256, ge=1, description="replay minibatch (official: 256)")
        buffer_size: int = Field(1_000_000, ge=1, description="replay capacity (official: 1e6)")
        learning_starts: int | None = Field(None, ge=0, description="steps before the first update (None: "
                                                                     "batch_size, as the official buffer > BATCH_SIZE)")

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        cfg = self.config
        _, _, SAC, BaseCallback = _rl()
        env_cls = latent_env_class()
        latent = tuple(prior.latent_shape)
        dim = int(np.prod(latent))
        ids = torch.unique(labels)
        seeds = torch.randint(2**31 - 1, (len(ids),), generator=generator).tolist()

        def scorer(y: int) -> Scorer:
            def score(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                zz = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)).to(prior.device).view(-1, *latent)
                yy = torch.full((len(zz),), y, dtype=torch.long, device=prior.device)
                with torch.no_grad():
                    logp = target.log_probs(prior.decode(zz, yy)).float().cpu()
                p = logp.exp()
                others = p.clone()
                others[:, y] = -1.0
                return (logp[:, y].numpy(), p[:, y].numpy(), (p[:, y] - others.max(1).values).numpy())

            return score

        out_z = torch.zeros((len(labels), dim))
        out_scores = torch.zeros(len(labels))
        info: dict[str, Any] = {"best_confidence": {}, "test_confidence_first_tenth": {},
                                "test_confidence_last_tenth": {}}
        # under a budget, each identity's episodes are planned from its share of what is left (module docstring)
        budgeted = getattr(target, "budget", None) is not None
        per_episode = cfg.max_step * (1 if cfg.alpha == 0.0 else 2) + 1
        planned: dict[int, int] = {}
        refused = False
        with _global_rngs_kept():
            for i, (y_t, s) in enumerate(zip(ids.tolist(), seeds)):
                rows = (labels == y_t).nonzero().flatten()
                episodes = cfg.max_episodes
                if budgeted:
                    episodes = affordable(target, cfg.max_episodes, each=per_episode, share=1.0 / (len(ids) - i))
                    planned[int(y_t)] = episodes
                if refused or getattr(target, "exhausted", False) or episodes == 0:  # nothing left to search with
                    gen = torch.Generator().manual_seed(int(s))
                    best = [(0.0, 0, prior.sample_latent(1, gen).reshape(dim).float().cpu().numpy()) for _ in rows]
                    curve = [0.0]
                else:
                    best, curve, stopped = self._search(SAC, BaseCallback, env_cls, scorer(int(y_t)), prior, latent,
                                                        dim, int(s), len(rows), int(y_t), episodes)
                    refused = refused or stopped
                for r, (conf, _, z) in zip(rows.tolist(), best):
                    out_z[r] = torch.from_numpy(z)
                    out_scores[r] = conf
                tenth = max(1, len(curve) // 10)
                info["best_confidence"][int(y_t)] = float(best[0][0])
                info["test_confidence_first_tenth"][int(y_t)] = float(np.mean(curve[:tenth])) if curve else 0.0
                info["test_confidence_last_tenth"][int(y_t)] = float(np.mean(curve[-tenth:])) if curve else 0.0
        z = out_z.view(-1, *latent).to(prior.device)
        with torch.no_grad():
            images = prior.decode(z, labels.to(prior.device))
        info["episodes"] = cfg.max_episodes
        info["exhausted"] = refused or bool(getattr(target, "exhausted", False))
        if budgeted and planned:
            first = next(iter(planned.values()))
            info["planned_episodes_per_identity"] = first
            info["planned_queries_per_identity"] = first * per_episode
            info["episodes_per_identity"] = planned
            info["exhausted"] = info["exhausted"] or any(e < cfg.max_episodes for e in planned.values())
        return AttackResult(self.name, images, labels, out_scores, 0, 0.0, seed, {}, latents=z, extras=info)

    def _search(self, SAC, BaseCallback, env_cls, score: Scorer, prior, latent: tuple[int, ...], dim: int,  # noqa: ANN001, N803
                seed: int, keep: int, y: int,
                episodes: int) -> tuple[list[tuple[float, int, np.ndarray]], list[float], bool]:
        """One identity's agent: train for ``episodes`` episodes, testing after each. Returns its ``keep`` best
        test latents, best first, as (confidence, episode, latent), every test's confidence, and whether the
        target refused a query (the search then ended with what it had)."""
        cfg = self.config
        state_gen = torch.Generator().manual_seed(seed)
        test_gen = torch.Generator().manual_seed(seed + 1)

        def sample(gen: torch.Generator) -> np.ndarray:
            return prior.sample_latent(1, gen).reshape(dim).float().cpu().numpy()

        env = env_cls(score, lambda: sample(state_gen), dim, alpha=cfg.alpha, max_step=cfg.max_step,
                      weights=(cfg.w1, cfg.w2, cfg.w3), floor=cfg.margin_floor)
        total = episodes * cfg.max_step
        starts = cfg.batch_size if cfg.learning_starts is None else cfg.learning_starts
        model = SAC("MlpPolicy", env, learning_rate=cfg.lr, buffer_size=min(cfg.buffer_size, total),
                    learning_starts=starts, batch_size=cfg.batch_size, tau=cfg.tau, gamma=cfg.gamma, train_freq=1,
                    gradient_steps=1, ent_coef="auto_1.0", target_entropy="auto", target_update_interval=1,
                    policy_kwargs={"net_arch": [cfg.hidden, cfg.hidden]}, seed=seed, device="cpu", verbose=0)
        best: list[tuple[float, int, np.ndarray]] = []  # a min-heap of the `keep` best (confidence, episode)
        curve: list[float] = []

        def test() -> None:
            z = sample(test_gen)
            for _ in range(cfg.max_step):
                a, _ = model.predict(z, deterministic=False)
                z = (cfg.alpha * z + (1.0 - cfg.alpha) * np.asarray(a, dtype=np.float32)).astype(np.float32)
            conf = float(score(z[None])[1][0])
            curve.append(conf)
            item = (conf, len(curve), z)
            if len(best) < keep:
                heapq.heappush(best, item)
            elif (conf, len(curve)) > best[0][:2]:
                heapq.heapreplace(best, item)

        with progress.task(f"rlb-mi: identity {y}", total=episodes, unit="episode") as bar:

            class Tester(BaseCallback):
                """After each episode, once the update that follows its last step is done: a test rollout (the
                official order: agent.step learns, then the test image is drawn)."""

                pending = False

                def _on_step(self) -> bool:
                    if bool(self.locals["dones"][0]):
                        self.pending = True
                    return True

                def _flush(self) -> None:
                    if self.pending:
                        self.pending = False
                        test()
                        bar.advance(1, info=f"best p_y {max(best)[0]:.3f}")

                def _on_rollout_start(self) -> None:
                    self._flush()

                def _on_training_end(self) -> None:
                    self._flush()

            refused = False
            try:
                model.learn(total_timesteps=total, callback=Tester())
            except QueryBudgetExceeded:  # the budget ends the search: the best test latents so far are the result
                refused = True
        while len(best) < keep:  # too few tests before the budget ran out: untested latents, confidence 0
            heapq.heappush(best, (0.0, 0, sample(test_gen)))
        return sorted(best, key=lambda b: (b[0], b[1]), reverse=True), curve, refused


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(RLBMI)
