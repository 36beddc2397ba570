"""MIRROR: Model Inversion for Deep Learning Network with High Fidelity (An et al., NDSS 2022),
https://www.ndss-symposium.org/ndss-paper/auto-draft-203/ ; official code github.com/njuaplusplus/mirror.

Two attacks in a prior's style space ``w`` (StyleGAN's mapping output; for a prior without a style space of its
own, its latent ``z``: :class:`~invertkit.core.interfaces.prior.Prior`'s defaults make the latent the style):

* ``mirror-b`` (black-box, ``my_blackbox_mirror.py``): a genetic algorithm on ``w`` whose fitness is the target's
  log-confidence in the identity, ``log p_y(G(w))``.
* ``mirror-w`` (white-box, ``my_whitebox_mirror.py`` + ``my_whitebox_mirror_helper.py``): Adam on ``w`` minimising
  ``10 * CE(T(G(w)), y)``, with the official learning-rate ramp and a random horizontal flip.

Common to both, as the official code does it:

* **The pre-sampled pool.** ``pool`` latents (official: 100,000, ``my_sample_z_w_space.py``: 1,000 x 100) are
  mapped to styles and decoded with truncation ``psi = 0.7`` (``trunc_psi``; StyleGAN's truncation towards the
  mean style, :meth:`Prior.truncate_style`: the identity for a prior without a mean style). The target scores
  the pool once, one query per latent, every class at once; the starts are the pool's best for each identity
  (``init_population`` / ``find_closest_latents``).
* **The p-space bound.** StyleGAN's mapping network ends in a leaky ReLU (slope 0.2); MIRROR undoes it
  (``p = LeakyReLU_5(w)``), takes per-dimension mean and standard deviation of ``p`` over the pool and clips
  every ``w`` to ``LeakyReLU_0.2(mean +- p_std_ce * std)`` (``clip_quantile_bound``, ``p_std_ce = 1``). For a
  prior without a style space the latent is its own "p space" (no leaky ReLU to undo): ``z`` is clipped to
  mean +- ``p_std_ce`` std of the pool, about [-1, 1] for a Gaussian latent, as GMI clips.

**mirror-b** (``my_blackbox_mirror.py``, line-level facts; defaults in :class:`MirrorB.Config`): the initial
population is the ``population`` pool styles with the highest ``log p_y`` (``init_population``; the fitness
of the pool is re-used, not re-queried). Each generation (``VectorizedPopulation.produce_next_generation``):

1. one elite, the best individual, survives unchanged (``find_elite``);
2. ``population - 1`` children, each from two parents drawn with replacement with probabilities
   ``softmax(fitness)`` (``__get_parents``: ``random.choices`` on ``F.softmax(fitness_scores)``);
3. uniform crossover gene by gene, taking parent 1's gene with probability ``p = f1 / (f1 + f2)`` of the two
   parents' fitness (``__crossover``). The fitness is a log-probability (negative), so the official formula
   favours the *less* fit parent; ``crossover_bias = "official"`` keeps it, ``"fitter"`` uses the
   confidences ``e^f1 / (e^f1 + e^f2)`` instead (what the formula presumably meant);
4. mutation in p space (``__mutate`` / ``apply_noise_func``): each gene with probability ``mutation_prob = 0.1``
   gets ``mutation_ce * (2 * std_p * u - std_p)``, ``u ~ U[0, 1)`` per dimension drawn once per generation and
   shared by all children (``torch.rand_like(all_p_stds)``, shape ``(1, 512)``), then the child is clipped to
   the p-space bound (every child, mutated or not; the initial population, taken from the pool, is not
   clipped, so an elite from it may lie outside the bound, as in the official code);
5. the run stops once the elite's confidence reaches ``min_score = 0.95`` (checked before every generation)
   or after ``generations = 100``. The result is the elite.

Population: the released run scripts (``scripts/run_vggface*_blackbox.sh``) use ``--population_size=1000``,
the default here; the argparse default is 100.

The genetic algorithm runs on **pymoo** (``GeneticAlgorithm`` through its ask-and-tell interface) with
MIRROR's operators as pymoo operators: :class:`SoftmaxRoulette` (selection), :class:`FitnessWeightedCrossover`,
:class:`PSpaceMutation` and :class:`OneElite` (survival: the best parent plus every child). pymoo is the
library whose genetic algorithm is built from exchangeable selection, crossover, mutation and survival
operators, which is what MIRROR's algorithm is; nevergrad and cma offer evolution strategies and DE without
roulette selection, per-gene mutation probability or a fixed elite count. Each row of ``labels`` is one
run, as one official run is one identity; all runs advance together and every generation is one batch of
queries.

**mirror-w** (``my_whitebox_mirror_helper.mirror_attack``; the released scripts
``scripts/run_*_whitebox.sh``): the starts are the pool's ``n`` best styles for the identity (``n`` the
number of rows asking for it; the official ``bs = 8`` per identity), optimised with Adam (betas (0.9, 0.999),
eps 1e-8) at ``lr = 0.25`` (scripts; argparse 0.2) under ``adjust_lr``'s schedule (cosine ramp-up over the
first 5 % of the steps, cosine ramp-down over the last 25 %), ``iterations = 20,000`` (argparse ``epochs``),
loss ``loss_class_ce * CE(T(G(w)), y)`` with ``loss_class_ce = 10`` (scripts; argparse 1), the batch flipped
horizontally with probability 0.5 each step (``--do_flip``), no discriminator term (``loss_discri_ce = 0``),
``w`` clipped to the p-space bound after every step, and the best ``w`` kept.

Deliberate differences:

* *Samples per identity.* An official run reconstructs one identity; here every row of ``labels`` is a run.
  For mirror-b, the ``n`` runs of one identity take their initial populations from ``n`` disjoint shards of
  the pool (the pool's indices modulo ``n``), so that they do not all start from (and, past ``min_score``,
  stop at) the same elite; with one row per identity this is the official selection.
* *Queries.* The pool is scored once per attack for every identity (the official code scores it once per
  target model and caches the logits). mirror-b does not re-query the elite each generation (the official
  ``compute_fitness`` re-evaluates the whole population: the same number for a deterministic target), so a
  generation costs ``population - 1`` queries per run.
* *Access (mirror-b).* ``requires = {topk}``: the fitness is read from ``probs`` where the target releases them,
  else from ``topk(x, max_topk)`` (the classes left out count as confidence 0). It runs under black-box access,
  top-k access and output defenses (rounding, top-k); a confidence of 0 counts as ``log 1e-12``.
* *Best (mirror-w).* The official keeps the batch's best step (lowest batch loss); here each row keeps its own
  best, at the latents where that loss was measured.
* *mirror-w's loss* reads ``logits`` (``requires = {grad, logits}``), as the official ``nn.CrossEntropyLoss``.
* *Planning within a query budget (mirror-b; ours, not in the paper).* The official code has no query budget.
  Given one (``target.budget``, public knowledge of an API quota), mirror-b sizes itself with
  :func:`~invertkit.core.interfaces.access.affordable` instead of failing. When the whole run (the pool plus
  every generation of every run, ``min_score`` aside) would not fit in what is left, scoring the pool takes
  what the full-size search leaves, or ``budget_share`` of what is left where that is more. The pool is still
  *sampled* in full (no query), so the p-space bound and the random stream are those of the unbudgeted run;
  only its first ``planned_pool`` styles are scored. Before each generation every run still to do (not at
  ``min_score`` nor at ``generations``) gets its next generation only if it fits in ``1 / runs still to do``
  of what is left (a run that stops frees its share for the others). Where not even one generation of a full
  population fits a run's share, its population is cut to what that share buys; a run whose scored shard
  cannot seed a population returns the best style it scored (with none scored, its shard's first style,
  score ``-inf``). Whatever was cut, ``extras["exhausted"]`` is True, and ``planned_pool``,
  ``planned_population`` and ``planned_generations`` give the sizes planned. Should a query still be refused
  (``QueryBudgetExceeded``), the phase it hits ends with what was answered. Without a budget nothing changes.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from invertkit.core.errors import ConfigError, QueryBudgetExceeded
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.access import affordable, budget_left
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.optim import batched

#: the confidence a class left out of a released vector counts as, in log-fitness (log 0 is -inf)
FLOOR = 1e-12


# ------------------------------------------------------------------------------------------ read-outs
def released_confidences(target: Any, x: Tensor) -> Tensor:
    """The target's confidence vector for ``x`` as released (one query per row): ``probs`` where granted, else
    the ``topk(x, max_topk)`` entries scattered into zeros. ``(N, num_classes)`` float32 on the CPU."""
    if target.has(C.PROBS):
        return target.probs(x).detach().float().cpu()
    values, index = target.topk(x, target.max_topk or target.num_classes)
    out = torch.zeros(len(x), target.num_classes)
    return out.scatter(1, index.detach().long().cpu(), values.detach().float().cpu())


def softmax_confidences(target: Any, x: Tensor) -> Tensor:
    """``softmax(target.logits(x))`` (white-box read-out), detached, on the CPU."""
    with torch.no_grad():
        return F.softmax(target.logits(x).float(), dim=1).cpu()


# ------------------------------------------------------------------------------------------ the search space
def leaky_relu_np(x: np.ndarray, slope: float) -> np.ndarray:
    return np.where(x >= 0, x, slope * x)


class StyleSpace:
    """A prior's style space as MIRROR searches it: flat style vectors ``(N, D)``, decoded with truncation
    ``psi``; MIRROR's p space (``LeakyReLU_5(w)``, undoing the mapping's last activation) where the prior has a
    style space of its own, the latent itself otherwise; and the pool's p-space bound."""

    def __init__(self, prior: Any, truncation: float, p_std_ce: float, batch_size: int) -> None:
        self.prior = prior
        self.psi = float(truncation)
        self.p_std_ce = float(p_std_ce)
        self.batch_size = int(batch_size)
        self.style = bool(getattr(prior, "has_style_space", False))
        self.shape = tuple(prior.style_shape)
        self.dim = int(math.prod(self.shape))
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None
        self.p_std: Tensor | None = None

    # p space
    def to_p(self, w: Tensor) -> Tensor:
        return F.leaky_relu(w, 5.0) if self.style else w

    def from_p(self, p: Tensor) -> Tensor:
        return F.leaky_relu(p, 0.2) if self.style else p

    def to_p_np(self, w: np.ndarray) -> np.ndarray:
        return leaky_relu_np(w, 5.0) if self.style else w

    def from_p_np(self, p: np.ndarray) -> np.ndarray:
        return leaky_relu_np(p, 0.2) if self.style else p

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` style vectors of the prior's mapping (``(n, D)``, on the prior's device)."""
        z = self.prior.sample_latent(n, generator)
        ws = [self.prior.to_style(z[sl]).reshape(sl.stop - sl.start, -1) for sl in batched(n, self.batch_size)]
        return torch.cat(ws).float()

    def fit_bound(self, pool: Tensor) -> None:
        """MIRROR's bound from the pool: ``from_p(mean_p +- p_std_ce * std_p)`` per dimension (population std)."""
        p = self.to_p(pool)
        mean, std = p.mean(0, keepdim=True), p.std(0, unbiased=False, keepdim=True)
        self.p_std = std
        if self.p_std_ce > 0:
            self.lo, self.hi = self.from_p(mean - self.p_std_ce * std), self.from_p(mean + self.p_std_ce * std)

    def clip(self, w: Tensor) -> Tensor:
        if self.lo is None or self.hi is None:
            return w
        return torch.max(torch.min(w, self.hi.to(w)), self.lo.to(w))

    def decode(self, w: Tensor, labels: Tensor | None = None) -> Tensor:
        """Images of flat style vectors ``w`` (differentiable), truncated towards the mean style by ``psi``."""
        styles = self.prior.truncate_style(w.reshape(len(w), *self.shape), self.psi)
        return self.prior.decode_style(styles, labels)


def pool_table(read, space: StyleSpace, pool: Tensor, classes: list[int], conditional: bool) -> Tensor:  # noqa: ANN001
    """The target's confidence in each of ``classes`` for every pool style (``(len(pool), len(classes))``), one
    query per style for an unconditional prior (every class at once), one per style and class for a
    conditional one (which decodes each class's pool with its label)."""
    table = torch.zeros(len(pool), len(classes))
    for sl in batched(len(pool), space.batch_size):
        w = pool[sl]
        if not conditional:
            with torch.no_grad():
                x = space.decode(w)
            table[sl] = read(x)[:, classes]
            continue
        for j, y in enumerate(classes):
            yy = torch.full((len(w),), y, dtype=torch.long, device=w.device)
            with torch.no_grad():
                x = space.decode(w, yy)
            table[sl, j] = read(x)[:, y]
    return table


def occurrences(labels: Tensor) -> tuple[Tensor, Tensor]:
    """For each row of ``labels``: its index among the rows of the same identity, and that identity's count."""
    rank = torch.zeros(len(labels), dtype=torch.long)
    count = torch.zeros(len(labels), dtype=torch.long)
    for y in labels.unique():
        rows = (labels == y).nonzero().flatten()
        rank[rows] = torch.arange(len(rows))
        count[rows] = len(rows)
    return rank, count


class MirrorConfig(AttackConfig):
    """What both MIRROR attacks share: the pre-sampled pool and the p-space bound."""

    pool: int = Field(100_000, ge=2, description="pre-sampled styles the starts are selected from "
                      "(MIRROR: 100,000, my_sample_z_w_space.py)")
    truncation: float = Field(0.7, gt=0, le=1, description="truncation psi of the decoded styles (MIRROR: 0.7; "
                              "the identity for a prior without a mean style)")
    p_std_ce: float = Field(1.0, ge=0, description="styles are clipped to mean +- p_std_ce * std in p space "
                            "(MIRROR: 1; 0 disables the bound)")
    batch_size: int = Field(1000, ge=1, description="styles decoded and queried at once (MIRROR's bs: 1000)")


# ------------------------------------------------------------------------------------------ pymoo operators
def _pymoo():  # noqa: ANN202 - the pymoo classes, imported when an attack runs (listing imports no pymoo)
    try:
        from pymoo.algorithms.base.genetic import GeneticAlgorithm
        from pymoo.core.crossover import Crossover
        from pymoo.core.mutation import Mutation
        from pymoo.core.population import Population
        from pymoo.core.problem import Problem
        from pymoo.core.selection import Selection
        from pymoo.core.survival import Survival
    except ImportError as exc:  # pragma: no cover - a missing optional dependency
        raise ConfigError("mirror-b runs its genetic algorithm on pymoo: pip install 'invertkit[evolution]'") from exc
    return GeneticAlgorithm, Crossover, Mutation, Population, Problem, Selection, Survival


def make_operators(space: StyleSpace, cfg: Any) -> dict[str, Any]:
    """MIRROR's selection, crossover, mutation and survival as pymoo operators."""
    _, Crossover, Mutation, Population, _, Selection, Survival = _pymoo()
    p_std = space.p_std.detach().double().cpu().numpy().reshape(-1)
    lo = None if space.lo is None else space.lo.detach().double().cpu().numpy().reshape(-1)
    hi = None if space.hi is None else space.hi.detach().double().cpu().numpy().reshape(-1)

    class SoftmaxRoulette(Selection):
        """Parents drawn with replacement with probability ``softmax(fitness)`` (``__get_parents``)."""

        def _do(self, problem, pop, n_select, n_parents, random_state=None, **kwargs):  # noqa: ANN001, ANN202
            fit = -pop.get("F")[:, 0]
            weights = np.exp(fit - fit.max())
            return random_state.choice(len(pop), size=(n_select, n_parents), p=weights / weights.sum())

    class FitnessWeightedCrossover(Crossover):
        """Uniform crossover taking each gene from parent 1 with a fitness-given probability (``__crossover``)."""

        def __init__(self) -> None:
            super().__init__(n_parents=2, n_offsprings=1, prob=1.0)

        def do(self, problem, pop, parents=None, *args, random_state=None, **kwargs):  # noqa: ANN001, ANN202
            matings = pop if parents is None else [pop[m] for m in parents]
            fitness = np.array([[-float(ind.get("F")[0]) for ind in m] for m in matings])
            return super().do(problem, pop, parents, *args, random_state=random_state, fitness=fitness, **kwargs)

        def _do(self, problem, X, *args, fitness=None, random_state=None, **kwargs):  # noqa: ANN001, ANN202
            f1, f2 = fitness[:, 0], fitness[:, 1]
            if cfg.crossover_bias == "official":
                total = f1 + f2
                p = np.divide(f1, total, out=np.full_like(f1, 0.5), where=total != 0)
            else:
                top = np.maximum(f1, f2)
                e1, e2 = np.exp(f1 - top), np.exp(f2 - top)
                p = e1 / (e1 + e2)
            take = random_state.random(X.shape[1:]) < p[:, None]
            return np.where(take, X[0], X[1])[None]

    class PSpaceMutation(Mutation):
        """Each gene with probability ``mutation_prob`` moves by ``mutation_ce * U(-std_p, std_p)`` in p space
        (one draw per dimension per generation, as the official ``apply_noise_func``), then clipped."""

        def __init__(self) -> None:
            super().__init__(prob=1.0)

        def _do(self, problem, X, *args, random_state=None, **kwargs):  # noqa: ANN001, ANN202
            mask = random_state.random(X.shape) < cfg.mutation_prob
            noise = cfg.mutation_ce * (2.0 * p_std * random_state.random(X.shape[1]) - p_std)
            out = space.from_p_np(space.to_p_np(X) + mask * noise)
            if lo is not None and hi is not None:
                out = np.maximum(np.minimum(out, hi), lo)
            return out

    class OneElite(Survival):
        """Generational replacement with elitism: the best parent(s) and every child survive."""

        def __init__(self) -> None:
            super().__init__(filter_infeasible=False)

        def _do(self, problem, pop, *args, n_survive=None, random_state=None, **kwargs):  # noqa: ANN001, ANN202
            n_children = n_survive - cfg.elites
            parents, children = pop[: len(pop) - n_children], pop[len(pop) - n_children:]
            best = np.argsort(parents.get("F")[:, 0], kind="stable")[: cfg.elites]
            return Population.merge(parents[best], children)

    return {"selection": SoftmaxRoulette(), "crossover": FitnessWeightedCrossover(), "mutation": PSpaceMutation(),
            "survival": OneElite()}


# ------------------------------------------------------------------------------------------ mirror-b
class MirrorB(Attack):
    name = "mirror-b"
    paper = "https://www.ndss-symposium.org/ndss-paper/auto-draft-203/"
    summary = ("MIRROR black-box: a genetic algorithm (pymoo) in the prior's style space on the target's "
               "log-confidence, started from the best of a pre-sampled pool, p-space clipping.")
    requires = frozenset({C.TOPK})

    class Config(MirrorConfig):
        """MIRROR's black-box defaults (``my_blackbox_mirror.py``; population from the released run scripts)."""

        population: int = Field(1000, ge=2, description="population size (MIRROR's run scripts: 1000; "
                                "argparse default 100)")
        generations: int = Field(100, ge=0, description="generations at most (MIRROR: 100)")
        elites: int = Field(1, ge=1, description="best individuals kept unchanged each generation (MIRROR: 1)")
        mutation_prob: float = Field(0.1, ge=0, le=1, description="per-gene mutation probability (MIRROR: 0.1)")
        mutation_ce: float = Field(0.1, ge=0, description="mutation strength, a fraction of the p-space std "
                                   "(MIRROR: 0.1)")
        min_score: float = Field(0.95, gt=0, le=1, description="a run stops once its elite's confidence reaches "
                                 "this (MIRROR: 0.95)")
        crossover_bias: Literal["official", "fitter"] = Field(
            "official", description="parent 1's gene probability: f1/(f1+f2) of the log-confidences as the "
            "official code ('official'), or the confidences' share ('fitter')")
        budget_share: float = Field(
            0.5, gt=0, le=1, description="under a query budget too small for the whole run, the most of what is "
            "left that scoring the pool may take (ours, not MIRROR's: 0.5, the pool's share of one official run, "
            "100,000 pool queries against 100 generations x 999 children)")

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        cfg = self.config
        if cfg.elites >= cfg.population:
            raise ConfigError(f"mirror-b: elites ({cfg.elites}) must be fewer than the population ({cfg.population})")
        GeneticAlgorithm, _, _, Population, Problem, _, _ = _pymoo()
        space = StyleSpace(prior, cfg.truncation, cfg.p_std_ce, cfg.batch_size)
        pool = space.sample(cfg.pool, generator)
        space.fit_bound(pool)
        conditional = bool(getattr(prior, "conditional", False))
        classes = sorted(set(labels.tolist()))
        column = {y: j for j, y in enumerate(classes)}
        rank, count = occurrences(labels)
        shards = [len(range(int(rank[r]), cfg.pool, int(count[r]))) for r in range(len(labels))]
        for r, y in enumerate(labels.tolist()):
            if shards[r] <= cfg.elites:
                raise ConfigError(f"mirror-b: a pool shard of {shards[r]} styles cannot seed a population "
                                  f"(pool {cfg.pool}, {int(count[r])} runs of identity {y})")

        # ---- the scored pool: all of it, unless the whole run does not fit in what is left of the budget
        per_style = len(classes) if conditional else 1
        full_pops = [min(cfg.population, size) for size in shards]
        search = cfg.generations * sum(n - cfg.elites for n in full_pops)
        scored = cfg.pool
        if target.budget is not None and cfg.pool * per_style + search > budget_left(target):
            rest = max(0, budget_left(target) - search) // per_style  # what the full-size search leaves to the pool
            scored = max(affordable(target, cfg.pool, each=per_style, share=cfg.budget_share), min(cfg.pool, rest))
        refused = False
        table = torch.zeros(scored, len(classes))
        done = 0
        try:
            for sl in batched(scored, cfg.batch_size):
                table[sl] = pool_table(lambda x: released_confidences(target, x), space, pool[sl], classes,
                                       conditional)
                done = sl.stop
        except QueryBudgetExceeded:
            refused = True
        log_table = table[:done].clamp_min(FLOOR).log()

        # ---- one genetic algorithm per row, its population cut where not one generation of it fits
        R = len(labels)
        seeds = torch.randint(2**31 - 1, (R,), generator=generator).tolist()
        problem = Problem(n_var=space.dim, n_obj=1)
        runs: list[Any] = []
        fallback: dict[int, tuple[np.ndarray, float]] = {}  # rows whose scored shard cannot seed a population
        pool_np = pool.detach().double().cpu().numpy()
        populations = []
        for r, y in enumerate(labels.tolist()):
            shard = torch.tensor(range(int(rank[r]), done, int(count[r])), dtype=torch.long)
            n = min(cfg.population, len(shard))
            if target.budget is not None and n > cfg.elites and not affordable(target, 1, each=n - cfg.elites,
                                                                                   share=1.0 / R):
                n = cfg.elites + affordable(target, n - cfg.elites, share=1.0 / R)
            populations.append(n)
            if n <= cfg.elites:  # only under a budget: the row keeps the best style it could score
                if len(shard):
                    fit, i = log_table[shard, column[y]].max(0)
                    fallback[r] = (pool_np[int(shard[i])], float(fit))
                else:
                    fallback[r] = (pool_np[int(rank[r])], -math.inf)
                runs.append(None)
                continue
            fit, idx = torch.topk(log_table[shard, column[y]], n)
            start = Population.new("X", pool_np[shard[idx].numpy()])
            start.set("F", -fit.double().numpy()[:, None])
            algorithm = GeneticAlgorithm(pop_size=n, sampling=start, n_offsprings=n - cfg.elites,
                                         eliminate_duplicates=False, **make_operators(space, cfg))
            algorithm.setup(problem, termination=("n_gen", cfg.generations + 1), seed=int(seeds[r]), verbose=False)
            algorithm.tell(infills=algorithm.ask())
            runs.append(algorithm)
        children = {r: populations[r] - cfg.elites for r, a in enumerate(runs) if a is not None}
        planned_generations = min((affordable(target, cfg.generations, each=c, share=1.0 / R)
                                   for c in children.values()), default=0)

        threshold = math.log(cfg.min_score)
        ys = labels.to(prior.device)
        generations_run = [0] * R
        for _ in range(cfg.generations):
            if refused:
                break
            todo = [r for r, a in enumerate(runs) if a is not None and generations_run[r] < cfg.generations
                    and -float(a.pop.get("F")[:, 0].min()) < threshold]
            # under a budget, each run still to do goes on while its generation fits in its share of what is left
            active = [r for r in todo if affordable(target, 1, each=children[r], share=1.0 / len(todo))]
            if not active:
                break
            asked = {r: runs[r].ask() for r in active}
            w = torch.from_numpy(np.concatenate([asked[r].get("X") for r in active])).float().to(prior.device)
            rows = torch.cat([torch.full((len(asked[r]),), r, dtype=torch.long) for r in active])
            fitness = torch.empty(len(w), dtype=torch.float64)
            try:
                for sl in batched(len(w), cfg.batch_size):
                    yy = ys[rows[sl].to(ys.device)]
                    with torch.no_grad():
                        x = space.decode(w[sl], yy if conditional else None)
                    conf = released_confidences(target, x)
                    picked = conf.gather(1, labels[rows[sl]].view(-1, 1)).squeeze(1)
                    fitness[sl] = picked.clamp_min(FLOOR).log().double()
            except QueryBudgetExceeded:  # the generation is dropped; every run keeps its population
                refused = True
                break
            start = 0
            for r in active:
                k = len(asked[r])
                asked[r].set("F", -fitness[start:start + k].numpy()[:, None])
                runs[r].tell(infills=asked[r])
                generations_run[r] += 1
                start += k

        elites, scores = [], []
        for r, a in enumerate(runs):
            if a is None:
                elites.append(fallback[r][0])
                scores.append(fallback[r][1])
                continue
            best = int(np.argmin(a.pop.get("F")[:, 0]))
            elites.append(a.pop.get("X")[best])
            scores.append(-float(a.pop.get("F")[best, 0]))
        w = torch.from_numpy(np.stack(elites)).float().to(prior.device)
        with torch.no_grad():
            images = torch.cat([space.decode(w[sl], ys[sl] if conditional else None)
                                for sl in batched(len(w), cfg.batch_size)])
        stopped_short = any(a is not None and generations_run[r] < cfg.generations
                            and -float(a.pop.get("F")[:, 0].min()) < threshold for r, a in enumerate(runs))
        cut = done < cfg.pool or populations != full_pops or stopped_short
        extras = {"generations": generations_run, "pool": cfg.pool, "style_space": space.style,
                  "planned_pool": scored, "planned_population": min(populations),
                  "planned_generations": planned_generations,
                  "exhausted": bool(refused or (target.budget is not None and cut))}
        return AttackResult(self.name, images, labels, torch.tensor(scores), 0, 0.0, seed, {}, latents=w, extras=extras)



# ------------------------------------------------------------------------------------------ mirror-w
def adjust_lr(initial_lr: float, step: int, steps: int, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """MIRROR's (rosinality's projector) schedule: cosine ramp-up over the first ``rampup`` of the steps and
    cosine ramp-down over the last ``rampdown`` (``adjust_lr`` in ``my_whitebox_mirror_helper.py``)."""
    t = step / steps
    ramp = min(1.0, (1.0 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return initial_lr * ramp * min(1.0, t / rampup)


class MirrorW(Attack):
    name = "mirror-w"
    paper = "https://www.ndss-symposium.org/ndss-paper/auto-draft-203/"
    summary = ("MIRROR white-box: Adam on the prior's style vectors from the best of a pre-sampled pool, "
               "10 x CE, random flips, ramped learning rate, p-space clipping.")
    requires = frozenset({C.GRAD, C.LOGITS})

    class Config(MirrorConfig):
        """MIRROR's white-box defaults (``my_whitebox_mirror.py``; lr and loss weight from the run scripts)."""

        iterations: int = Field(20_000, ge=1, description="Adam steps (MIRROR's epochs: 20,000)")
        lr: float = Field(0.25, gt=0, description="peak learning rate (MIRROR's run scripts: 0.25; argparse 0.2)")
        betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas (MIRROR: 0.9, 0.999)")
        rampup: float = Field(0.05, gt=0, le=1, description="fraction of steps of the cosine lr ramp-up (MIRROR: 0.05)")
        rampdown: float = Field(0.25, gt=0, le=1, description="fraction of steps of the cosine ramp-down (MIRROR: 0.25)")
        loss_class_ce: float = Field(10.0, gt=0, description="weight of the CE loss (MIRROR's run scripts: 10)")
        do_flip: bool = Field(True, description="flip the batch horizontally with probability 0.5 each step "
                              "(MIRROR's run scripts: --do_flip)")

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        cfg = self.config
        space = StyleSpace(prior, cfg.truncation, cfg.p_std_ce, cfg.batch_size)
        pool = space.sample(cfg.pool, generator)
        space.fit_bound(pool)
        conditional = bool(getattr(prior, "conditional", False))
        classes = sorted(set(labels.tolist()))
        column = {y: j for j, y in enumerate(classes)}
        table = pool_table(lambda x: softmax_confidences(target, x), space, pool, classes, conditional)
        start = torch.empty(len(labels), space.dim, device=pool.device)
        for y in classes:
            rows = (labels == y).nonzero().flatten()
            best = torch.topk(table[:, column[y]], min(len(rows), cfg.pool)).indices
            start[rows] = pool[best[torch.arange(len(rows)) % len(best)].to(pool.device)]
        y = labels.to(prior.device)
        w = start.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=cfg.lr, betas=cfg.betas, eps=1e-8)
        best_w, best_loss = start.clone(), torch.full((len(labels),), float("inf"))
        for step in range(1, cfg.iterations + 1):
            for group in opt.param_groups:
                group["lr"] = adjust_lr(cfg.lr, step, cfg.iterations, cfg.rampdown, cfg.rampup)
            x = space.decode(w, y if conditional else None)
            if cfg.do_flip and float(torch.rand((), generator=generator)) > 0.5:
                x = torch.flip(x, dims=(3,))
            logits = target.logits(x)
            rows = F.cross_entropy(logits.float(), y.to(logits.device), reduction="none")
            loss = cfg.loss_class_ce * rows.mean()
            with torch.no_grad():
                per_row = rows.detach().cpu()
                better = per_row < best_loss
                best_loss = torch.where(better, per_row, best_loss)
                best_w[better.to(best_w.device)] = w.detach()[better.to(w.device)]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                w.copy_(space.clip(w))
        with torch.no_grad():
            images = torch.cat([space.decode(best_w[sl], y[sl] if conditional else None)
                                for sl in batched(len(best_w), cfg.batch_size)])
        extras = {"pool": cfg.pool, "style_space": space.style}
        return AttackResult(self.name, images, labels, -cfg.loss_class_ce * best_loss, 0, 0.0, seed, {},
                            latents=best_w, extras=extras)


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(MirrorB)
    register(MirrorW)
