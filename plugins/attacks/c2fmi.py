"""C2FMI: Coarse-to-Fine Black-box Model Inversion Attack (Ye et al., IEEE TDSC 2023),
https://doi.org/10.1109/TDSC.2023.3285071 ; official code github.com/MiLabHITSZ/2022YeC2FMI.

Black-box (the target's confidence vector only), in two stages, following ``main_attack.py``,
``utils/train_inv.py``, ``models/predict2feature.py`` and ``utils/DE.py`` (``DE_c2b_5_bin2``, which
``post_de`` runs):

**The attacker's own models.** An *embedding model* E: a classifier the attacker trains on its public images
and their (public) labels (official: a FaceNet InceptionResNet trained on CASIA-WebFace, whose 10,575-way
classifier output ``forward_classifier`` is the feature; ``utils/train_facenet.py``: Adam lr 1e-3, batch 64,
StepLR x0.94 per epoch, 10 + 10 epochs). Here ``embed_arch`` from scratch with that recipe, for
``embed_epochs = 20``; its logits are the feature (``embed_output = "logits"``; ``"features"``: its
penultimate embedding instead).

An *inverse network* P (``predict2feature``): from the target's prediction vector to E's feature of the same
image. Its input transform keeps the ``inverse_trunc`` largest confidences (official ``main_attack.py``: all
classes; the anti-defense script: 100), takes ``log`` (clamped at -1000) + 50, shifts the row to be
non-negative, zeroes the rest and L2-normalises; then ``Linear(C, 4096) - LeakyReLU(0.2) - Linear(4096, 4096) -
LeakyReLU(0.2) - Dropout(0.25) - Linear(4096, dim E)``. Trained (``train_inv.py``) on the public images with
MSE to E's feature, Adam lr 1e-3, batch 128 (last partial batch dropped), StepLR(2, 0.8), 20 epochs. The
target's answers for the public images are queries through the attacker's view: every public image is asked
once (the official loop asks again every epoch: the same numbers, 20 times the queries), and the network is
kept in the attack's cache (``self.context.cache``), which charges those queries again on every re-use.

**Stage 1 (coarse).** Per attacked row, ``candidates = 16`` latents (each the mean of two mapped random
styles, as the official ``latents[2j:2j+2].mean(0)``) are optimised for ``coarse_steps = 20`` Adam steps (lr
0.02, StepLR(20, 0.95)) to minimise ``MSE(E(G(w)), P(v_y))`` where ``v_y`` is the official near-one-hot
prediction: ``|N(0, 1)|`` noise with the identity's entry set to 1e18, L2-normalised, drawn anew each step.
No query: E, P and G are the attacker's. The target then scores the candidates (``candidates`` queries) and
the ``keep = 10`` most confident start stage 2.

**Stage 2 (fine).** Differential evolution on the target's confidence ``p_y(G(w))`` (``cal_fitness``):
population ``popsize = 32``, the kept latents plus ``popsize - keep`` made as ``0.7 * (0.5 * (0.5 * (x1 + x2) +
x3)) + 0.3 * w_rand`` (three distinct kept latents, ``w_rand`` the mean of three mapped random styles;
``extend``). Each of ``generations = 500`` generations (``step``): donor ``x_i + 0.02 * (x_best - x_i) +
beta * sum_{k<4} (x_a - x_b)`` (``gen_one_child``: ``nv = 4`` difference pairs drawn with replacement,
``beta = 0.1``, decaying as ``0.1 * (G - g) / 50`` over the last 30 generations), binomial crossover taking each
donor gene with probability ``CR = 0.5`` (``cross``, no forced gene), and the trial replaces its parent
where it is strictly more confident. The result is the population's best (``get_img(only_best=True)``).

The DE runs on **pymoo**'s ``DE`` (ask-and-tell, ``ImprovementReplacement``'s one-to-one greedy selection,
binomial masks from ``mut_binomial``) with C2FMI's donor rule as its variant (:class:`C2FMIVariant`): pymoo's
own variants share one ``F`` between the best-attraction and the differences and have no four-pair
current-to-best form, nevergrad's DE has one difference pair and SciPy's solves one problem at a time; here
every attacked row is one DE run and all runs advance together, one batch of queries per generation.

Deliberate differences:

* Parents keep their fitness (pymoo's DE): the official ``step`` re-queries the whole population every
  generation; here a generation costs ``popsize`` queries per row (the trials), half the official's, the same
  numbers for a deterministic target. The kept stage-1 candidates are not re-queried either.
* The generator is decoded without truncation, as the official ``g_ema([w], input_is_latent=True)``; the
  latent is the prior's style vector where it has a style space of its own (StyleGAN's ``w``, official), its
  latent otherwise.
* ``requires = {topk}``: the prediction vector and the fitness are read from ``probs`` where released, else
  from ``topk(x, max_topk)`` with the missing classes as 0; the inverse network's transform maps a 0 to the
  bottom of its range (the official anti-defense variant trains on truncated vectors, ``inverse_trunc``).
* The embedding model is trained here on the public split (the official one is pre-trained on another face
  data set), from scratch, without the triplet loss.
* *Planning within a query budget (ours, not in the paper).* The official code has no query budget. Given one
  (``target.budget``, public knowledge of an API quota), the attack sizes itself with
  :func:`~invertkit.core.interfaces.access.affordable` instead of failing. When the whole run (the public
  images, then per row the candidates, the extended population and every generation) would not fit in what is
  left, the inverse network is trained on the answers for what the full-size search leaves, or for
  ``budget_share`` of what is left where that is more: ``planned_public`` public images, a seeded (seed 0)
  subset of the split, their number in the network's cache key; with none, stage 1 is skipped (the candidates
  stay the random latents). What is left then is split evenly across the attacked rows (they advance together
  and cost the same): a row's share buys its ``candidates``, its extended population and as many generations
  as fit (the DE then runs as C2FMI's DE of that many generations, ``beta``'s decay included). A share that
  cannot buy that setup runs no DE: it scores the candidates it can afford, those with the lowest stage-1
  loss, and returns the most confident (with none scored, the lowest stage-1 loss, score ``-inf``). Whatever
  was cut, ``extras["exhausted"]`` is True, and ``planned_public``, ``planned_candidates``, ``planned_popsize``
  and ``planned_generations`` give the sizes planned. Should a query still be refused
  (``QueryBudgetExceeded``), the phase it hits ends with what was answered. Without a budget the run is
  unchanged (the same queries and images).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import ConfigError, QueryBudgetExceeded, UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.access import affordable, budget_left
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.optim import batched
from invertkit.plugins.attacks.mirror import released_confidences


# ------------------------------------------------------------------------------------------ networks
class InverseNet(nn.Module):
    """C2FMI's ``predict2feature``: a truncated, log-scaled, L2-normalised prediction vector -> embedding."""

    def __init__(self, num_classes: int, out_dim: int, hidden: int = 4096, dropout: float = 0.25,
                 trunc: int | None = None) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.trunc = min(int(trunc or num_classes), self.num_classes)
        self.map = nn.Sequential(
            nn.Linear(self.num_classes, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
            nn.Linear(hidden, out_dim),
        )

    def encode(self, p: Tensor) -> Tensor:
        """The official input transform: top-``trunc`` entries, ``log`` clamped at -1000, + 50, shifted to be
        non-negative, scattered into zeros, L2-normalised."""
        top, index = torch.topk(p, self.trunc, dim=1)
        top = torch.clamp(torch.log(top), min=-1000) + 50.0
        top = top + F.relu(-top.min(1, keepdim=True)[0])
        return F.normalize(torch.zeros_like(p).scatter(1, index, top), p=2, dim=1)

    def forward(self, p: Tensor) -> Tensor:
        return self.map(self.encode(p))


class Embedding(nn.Module):
    """The attacker's embedding: a classifier's logits, or its penultimate features (``features(x)``)."""

    def __init__(self, net: nn.Module, output: str) -> None:
        super().__init__()
        self.net, self.output = net, output

    def forward(self, x: Tensor) -> Tensor:
        return self.net.features(x) if self.output == "features" else self.net(x)


def _step_schedule(opt: torch.optim.Optimizer, lr: float, step_size: int, gamma: float):  # noqa: ANN202
    def on_epoch(epoch: int, model: nn.Module) -> None:
        for group in opt.param_groups:
            group["lr"] = lr * gamma ** (epoch // step_size)
    return on_epoch


# ------------------------------------------------------------------------------------------ pymoo DE variant
def _pymoo():  # noqa: ANN202 - imported when the attack runs (listing imports no pymoo)
    try:
        from pymoo.algorithms.soo.nonconvex.de import DE
        from pymoo.core.infill import InfillCriterion
        from pymoo.core.population import Population
        from pymoo.core.problem import Problem
        from pymoo.operators.crossover.binx import mut_binomial
    except ImportError as exc:  # pragma: no cover - a missing optional dependency
        raise ConfigError("c2fmi runs its differential evolution on pymoo: pip install 'invertkit[evolution]'") from exc
    return DE, InfillCriterion, Population, Problem, mut_binomial


def make_variant(cfg: Any, generations: int | None = None) -> Any:
    """C2FMI's donor and crossover (``DE_c2b_5_bin2.step``) as a pymoo DE variant (an ``InfillCriterion``), for a
    run of ``generations`` (default ``cfg.generations``; beta's decay is over that run's last generations)."""
    total = cfg.generations if generations is None else int(generations)
    _, InfillCriterion, Population, _, mut_binomial = _pymoo()

    class C2FMIVariant(InfillCriterion):
        """``x_i + K (x_best - x_i) + beta * sum of nv random differences``, binomial crossover (CR, no forced
        gene); beta decays over the last 30 generations as the official ``0.1 * (G - g) / 50``."""

        def __init__(self) -> None:
            super().__init__()
            self.generation = 0

        def _do(self, problem, pop, n_offsprings, random_state=None, **kwargs):  # noqa: ANN001, ANN202
            g, G = self.generation, total
            self.generation += 1
            beta = cfg.F if g < G - cfg.decay_generations else cfg.F * (G - g) / 50.0
            X = pop.get("X")
            n = len(X)
            best = X[int(np.argmin(pop.get("F")[:, 0]))]
            pairs = random_state.choice(n, size=(n, cfg.differences, 2))
            donor = X + cfg.best_weight * (best - X) + beta * (X[pairs[:, :, 0]] - X[pairs[:, :, 1]]).sum(1)
            take = mut_binomial(n, X.shape[1], cfg.CR, at_least_once=False, random_state=random_state)
            return Population.new("X", np.where(take, donor, X)[:n_offsprings])

    return C2FMIVariant()


# ------------------------------------------------------------------------------------------ the attack
class C2FMI(Attack):
    name = "c2fmi"
    paper = "https://doi.org/10.1109/TDSC.2023.3285071"
    summary = ("Coarse-to-fine black-box MI: an inverse network (target predictions -> the attacker's embedding, "
               "trained on queried public images) guides a latent search, then differential evolution (pymoo) "
               "on the target's confidence.")
    requires = frozenset({C.TOPK})

    class Config(AttackConfig):
        """C2FMI's defaults (``main_attack.py``, ``utils/train_inv.py``, ``utils/DE.py`` ``DE_c2b_5_bin2``)."""

        # the attacker's embedding model
        embed_arch: str = Field("small-cnn", description="architecture of the attacker's embedding model, trained "
                                "on the public split (official: a FaceNet InceptionResNet pre-trained on CASIA)")
        embed_output: Literal["logits", "features"] = Field(
            "logits", description="the embedding: the classifier's output (official forward_classifier) or its "
            "penultimate features")
        embed_epochs: int = Field(20, ge=1, description="embedding training epochs (official FaceNet: 10 + 10)")
        embed_lr: float = Field(1e-3, gt=0, description="embedding Adam lr (official FaceNet: 1e-3)")
        embed_batch: int = Field(64, ge=1, description="embedding batch size (official FaceNet: 64)")
        embed_gamma: float = Field(0.94, gt=0, le=1, description="embedding lr decay per epoch (official: 0.94)")
        # the inverse network (predict2feature, train_inv.py)
        inverse_hidden: int = Field(4096, ge=1, description="hidden width of the inverse network (C2FMI: 4096)")
        inverse_dropout: float = Field(0.25, ge=0, lt=1, description="dropout of the inverse network (C2FMI: 0.25)")
        inverse_trunc: int | None = Field(None, ge=1, description="confidences kept in the inverse network's input "
                                          "(None: all, main_attack.py; anti-defense script: 100)")
        inverse_epochs: int = Field(20, ge=1, description="inverse network epochs (train_inv.py: 20)")
        inverse_lr: float = Field(1e-3, gt=0, description="inverse network Adam lr (train_inv.py: 1e-3)")
        inverse_batch: int = Field(128, ge=1, description="inverse network batch size (train_inv.py: 128)")
        inverse_step: int = Field(2, ge=1, description="inverse network StepLR step in epochs (train_inv.py: 2)")
        inverse_gamma: float = Field(0.8, gt=0, le=1, description="inverse network StepLR gamma (train_inv.py: 0.8)")
        # stage 1 (main_attack.py)
        candidates: int = Field(16, ge=2, description="stage-1 latents per attacked row (main_attack.py batch: 16)")
        coarse_steps: int = Field(20, ge=0, description="stage-1 Adam steps (main_attack.py step: 20)")
        coarse_lr: float = Field(0.02, gt=0, description="stage-1 Adam lr (main_attack.py: 0.02)")
        coarse_step_size: int = Field(20, ge=1, description="stage-1 StepLR step (main_attack.py: 20)")
        coarse_gamma: float = Field(0.95, gt=0, le=1, description="stage-1 StepLR gamma (main_attack.py: 0.95)")
        keep: int = Field(10, ge=3, description="stage-1 candidates that start stage 2 (main_attack.py: 10)")
        # stage 2 (DE_c2b_5_bin2)
        popsize: int = Field(32, ge=4, description="DE population (DE_c2b_5_bin2: 32)")
        generations: int = Field(500, ge=0, description="DE generations (post_de max_gen: 500)")
        F: float = Field(0.1, ge=0, description="DE difference weight beta (DE_c2b_5_bin2: 0.1)")
        best_weight: float = Field(0.02, ge=0, description="DE attraction to the best (gen_one_child: 0.02)")
        differences: int = Field(4, ge=1, description="difference pairs per donor (DE_c2b_5_bin2 nv: 4)")
        CR: float = Field(0.5, ge=0, le=1, description="probability a trial gene comes from the donor (cross: 0.5)")
        decay_generations: int = Field(30, ge=0, description="last generations over which beta decays "
                                       "(DE_c2b_5_bin2: 30, as 0.1 * (G - g) / 50)")
        batch_size: int = Field(1024, ge=1, description="latents decoded and queried at once")
        budget_share: float = Field(
            0.5, gt=0, le=1, description="under a query budget too small for the whole run, the most of what is "
            "left that the inverse network's training set (queried public images) may take (ours, not C2FMI's: "
            "0.5, an even split between the coarse stage's data and the fine search; the paper gives none)")

    # ---------------------------------------------------------------------------------- derived models
    def _public(self) -> tuple[Tensor, Tensor]:
        ctx = self.context
        if ctx is None or ctx.public_images is None or ctx.public_labels is None or ctx.plugins is None:
            raise UsageError("c2fmi trains its embedding and inverse networks on public data: it needs "
                             "context.public_images, public_labels and plugins (the bench sets them)")
        return ctx.public_images, ctx.public_labels

    def _cached(self, key: dict[str, Any], train, build, label: str) -> nn.Module:  # noqa: ANN001
        cache = getattr(self.context, "cache", None)
        if cache is None:
            return train().eval()
        return cache(key, train, build, label=label)

    def embedding(self, images: Tensor, labels: Tensor, device: torch.device) -> Embedding:
        """The attacker's embedding model, trained on the public split (no query)."""
        from invertkit.core.zoo.arch import build_architecture
        from invertkit.core.zoo.scenario import fingerprint
        from invertkit.core.zoo.train import fit

        cfg = self.config
        classes, y = torch.unique(labels, return_inverse=True)
        shape = tuple(images.shape[1:])

        def build() -> Embedding:
            torch.manual_seed(0)
            net = build_architecture(self.context.plugins, cfg.embed_arch, len(classes), shape)
            return Embedding(net, cfg.embed_output).to(device)

        def train() -> Embedding:
            emb = build()
            opt = torch.optim.Adam(emb.net.parameters(), lr=cfg.embed_lr)

            def loss(model: nn.Module, xb: Tensor, yb: Tensor, epoch: int) -> Tensor:
                return F.cross_entropy(model(xb.to(device)), yb.to(device))

            fit(emb.net, loss, (images, y), epochs=cfg.embed_epochs, batch_size=cfg.embed_batch, seed=0,
                optimizer=opt, schedule=False, on_epoch=_step_schedule(opt, cfg.embed_lr, 1, cfg.embed_gamma))
            return emb

        key = {"what": "c2fmi-embedding", "data": fingerprint(images, labels), "arch": cfg.embed_arch,
               "output": cfg.embed_output, "epochs": cfg.embed_epochs, "lr": cfg.embed_lr,
               "batch": cfg.embed_batch, "gamma": cfg.embed_gamma}
        emb = self._cached(key, train, build, "c2fmi-embedding")
        emb.requires_grad_(False)
        return emb.eval()

    def inverse(self, target: Any, emb: Embedding, images: Tensor, labels: Tensor, device: torch.device,
                queried: int | None = None) -> InverseNet:
        """The inverse network, trained on the target's answers for the public images (one query each); for
        ``queried`` of them (all by default), a subset drawn with seed 0 (in the split's order)."""
        from invertkit.core.zoo.scenario import fingerprint
        from invertkit.core.zoo.train import fit

        cfg = self.config
        n = len(images) if queried is None else int(queried)
        data = (images, labels)
        if n < len(images):
            subset = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n].sort().values
            images, labels = images[subset], labels[subset]
        with torch.no_grad():
            out_dim = int(emb(images[:1].to(device)).shape[1])

        def build() -> InverseNet:
            torch.manual_seed(0)
            return InverseNet(target.num_classes, out_dim, cfg.inverse_hidden, cfg.inverse_dropout,
                              cfg.inverse_trunc).to(device)

        def train() -> InverseNet:
            preds = torch.cat([released_confidences(target, images[sl].to(target.device))
                               for sl in batched(len(images), cfg.batch_size)])
            with torch.no_grad():
                feats = torch.cat([emb(images[sl].to(device)).float().cpu() for sl in batched(len(images), 512)])
            net = build()
            opt = torch.optim.Adam(net.parameters(), lr=cfg.inverse_lr)

            def loss(model: nn.Module, pb: Tensor, fb: Tensor, epoch: int) -> Tensor:
                return F.mse_loss(model(pb.to(device)), fb.to(device))

            fit(net, loss, (preds, feats), epochs=cfg.inverse_epochs, batch_size=cfg.inverse_batch, seed=0,
                optimizer=opt, schedule=False, drop_last=len(preds) > cfg.inverse_batch,
                on_epoch=_step_schedule(opt, cfg.inverse_lr, cfg.inverse_step, cfg.inverse_gamma))
            return net

        key = {"what": "c2fmi-inverse", "data": fingerprint(*data), "queried": n, "embedding": cfg.embed_arch,
               "output": cfg.embed_output, "embed_epochs": cfg.embed_epochs, "embed_lr": cfg.embed_lr,
               "embed_batch": cfg.embed_batch, "embed_gamma": cfg.embed_gamma, "hidden": cfg.inverse_hidden,
               "dropout": cfg.inverse_dropout, "trunc": cfg.inverse_trunc, "epochs": cfg.inverse_epochs,
               "lr": cfg.inverse_lr, "batch": cfg.inverse_batch, "step": cfg.inverse_step,
               "gamma": cfg.inverse_gamma, "classes": target.num_classes}
        net = self._cached(key, train, build, "c2fmi-inverse")
        net.requires_grad_(False)
        return net.eval()

    # ---------------------------------------------------------------------------------- the attack
    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        cfg = self.config
        if cfg.keep > cfg.candidates or cfg.keep > cfg.popsize:
            raise ConfigError(f"c2fmi: keep ({cfg.keep}) must not exceed candidates ({cfg.candidates}) "
                              f"or popsize ({cfg.popsize})")
        images, public_labels = self._public()
        device = prior.device
        emb = self.embedding(images, public_labels, device)
        _pymoo()  # before any query: pymoo is there

        shape = tuple(prior.style_shape)
        dim = int(math.prod(shape))
        conditional = bool(getattr(prior, "conditional", False))
        R, K = len(labels), cfg.candidates
        n_extra = cfg.popsize - cfg.keep
        y = labels.to(device)
        budgeted = target.budget is not None
        refused = False

        # ---- the inverse network's training set: every public image, unless the whole run does not fit
        per_row = K + n_extra + cfg.generations * cfg.popsize
        queried = len(images)
        if budgeted and len(images) + R * per_row > budget_left(target):
            rest = max(0, budget_left(target) - R * per_row)  # what the full-size search leaves
            queried = max(affordable(target, len(images), share=cfg.budget_share), min(len(images), rest))
        inv = None
        if queried > 0:
            try:
                inv = self.inverse(target, emb, images, public_labels, device, queried)
            except QueryBudgetExceeded:
                refused = True

        def styles(n: int) -> Tensor:
            with torch.no_grad():
                return prior.to_style(prior.sample_latent(n, generator)).reshape(n, dim).float()

        def decode(w: Tensor, yy: Tensor) -> Tensor:
            return prior.decode_style(w.reshape(len(w), *shape), yy if conditional else None)

        def confidence(w: Tensor, yy: Tensor) -> Tensor:
            out = torch.empty(len(w), dtype=torch.float64)
            for sl in batched(len(w), cfg.batch_size):
                with torch.no_grad():
                    x = decode(w[sl], yy[sl])
                conf = released_confidences(target, x)
                out[sl] = conf.gather(1, yy[sl].cpu().view(-1, 1)).squeeze(1).double()
            return out

        # ---- stage 1: latents towards the inverse network's embedding of the identity (no query)
        w = styles(2 * R * K).view(R * K, 2, dim).mean(1).clone().requires_grad_(True)
        yk = y.repeat_interleave(K)
        goal = None
        if inv is not None:
            opt = torch.optim.Adam([w], lr=cfg.coarse_lr)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.coarse_step_size, gamma=cfg.coarse_gamma)
            for _ in range(cfg.coarse_steps):
                v = torch.randn((R * K, target.num_classes), generator=generator).abs().to(device)
                v[torch.arange(R * K), yk] = 1e18
                with torch.no_grad():
                    goal = inv(F.normalize(v, p=2, dim=1))
                loss = F.mse_loss(emb(decode(w, yk)), goal)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        w = w.detach()

        # ---- the plan: what is left, split evenly across the rows (they advance together, at the same cost)
        generations, scored, run_de = cfg.generations, K, True
        if budgeted:
            share = affordable(target, per_row, share=1.0 / R)
            if share >= K + n_extra:
                generations = min(cfg.generations, (share - K - n_extra) // cfg.popsize)
            else:  # no DE: each row scores the candidates it can afford
                generations, scored, run_de = 0, min(K, share), False

        def gaps() -> Tensor:
            """Each candidate's stage-1 loss against the last goal, ``(R, K)`` (no query; 0 without stage 1)."""
            if goal is None:
                return torch.zeros(R, K)
            with torch.no_grad():
                return (emb(decode(w, yk)) - goal).pow(2).flatten(1).mean(1).view(R, K).cpu()

        first = None  # the target's confidence in the candidates, (R, K); -inf where not asked
        if run_de or scored > 0:
            # all candidates (DE), else those closest to the inverse network's goal
            order = torch.arange(K).repeat(R, 1) if run_de else torch.argsort(gaps(), dim=1, stable=True)
            asked = order[:, :scored]
            try:
                answered = confidence(w.view(R, K, dim)[torch.arange(R)[:, None], asked].reshape(R * scored, dim),
                                      y.repeat_interleave(scored)).view(R, scored)
                first = torch.full((R, K), -math.inf, dtype=torch.float64).scatter(1, asked, answered)
            except QueryBudgetExceeded:
                refused, run_de = True, False

        if run_de:  # ---- stage 2: differential evolution on the target's confidence (pymoo)
            w_best, scores, refused_de = self._fine(w, first, y, R, dim, generations, styles, confidence, generator)
            refused = refused or refused_de
        else:  # the coarse stage's result: its most confident scored candidate (none scored: the closest)
            pick = gaps().argmin(1) if first is None else first.argmax(1)
            scores = torch.full((R,), -math.inf) if first is None else first.max(1).values.float()
            w_best = w.view(R, K, dim)[torch.arange(R), pick.to(w.device)]
        with torch.no_grad():
            out = torch.cat([decode(w_best[sl], y[sl]) for sl in batched(R, cfg.batch_size)])
        stage1 = (first.max(1).values if first is not None else torch.full((R,), -math.inf)).tolist()
        cut = queried < len(images) or not run_de or generations < cfg.generations
        extras = {"stage1_best_confidence": stage1, "public_images": len(images), "planned_public": queried,
                  "planned_candidates": scored, "planned_popsize": cfg.popsize if run_de else 0,
                  "planned_generations": generations, "exhausted": bool(refused or (budgeted and cut))}
        return AttackResult(self.name, out, labels, scores, 0, 0.0, seed, {}, latents=w_best, extras=extras)

    def _fine(self, w: Tensor, first: Tensor, y: Tensor, R: int, dim: int, generations: int,  # noqa: N803
              styles: Callable[[int], Tensor], confidence: Callable[[Tensor, Tensor], Tensor],
              generator: torch.Generator) -> tuple[Tensor, Tensor, bool]:
        """Stage 2: each row's ``keep`` most confident candidates extended to a population, then ``generations``
        of C2FMI's DE per row (pymoo), every row in one batch of queries per generation. Returns the best
        latents, their confidences, and whether a query was refused (a refused batch is dropped: before the DE,
        the row keeps its best candidate; during it, its population)."""
        cfg = self.config
        DE, _, Population, Problem, _ = _pymoo()
        device = w.device
        K = cfg.candidates
        top = torch.topk(first, cfg.keep, dim=1)
        seeds = torch.randint(2**31 - 1, (R,), generator=generator).tolist()
        n_extra = cfg.popsize - cfg.keep
        rand_w = styles(3 * R * n_extra).view(R, n_extra, 3, dim).mean(2).cpu().double().numpy()
        w_rows = w.view(R, K, dim).cpu().double().numpy()
        problem = Problem(n_var=dim, n_obj=1)
        runs, starts = [], []
        for r in range(R):
            rng = np.random.default_rng(seeds[r])
            kept = w_rows[r][top.indices[r].numpy()]
            extra = []
            for j in range(n_extra):
                a, b, c = rng.choice(cfg.keep, size=3, replace=False)
                u = 0.5 * (0.5 * (kept[a] + kept[b]) + kept[c])
                extra.append(0.7 * u + 0.3 * rand_w[r, j])
            starts.append(np.concatenate([kept, np.stack(extra)]) if extra else kept)
        try:
            extra_fit = (confidence(torch.from_numpy(np.concatenate([s[cfg.keep:] for s in starts])).float().to(device),
                                    y.repeat_interleave(n_extra)).view(R, n_extra) if n_extra else torch.zeros(R, 0))
        except QueryBudgetExceeded:
            return w.view(R, K, dim)[torch.arange(R), top.indices[:, 0].to(device)], top.values[:, 0].float(), True
        for r in range(R):
            pop = Population.new("X", starts[r])
            pop.set("F", -torch.cat([top.values[r], extra_fit[r]]).numpy()[:, None])
            algorithm = DE(pop_size=cfg.popsize, sampling=pop, variant=make_variant(cfg, generations))
            algorithm.setup(problem, termination=("n_gen", generations + 1), seed=int(seeds[r]), verbose=False)
            algorithm.tell(infills=algorithm.ask())
            runs.append(algorithm)

        refused = False
        y_pop = y.repeat_interleave(cfg.popsize)
        for _ in range(generations):
            asked = [a.ask() for a in runs]
            trials = torch.from_numpy(np.concatenate([t.get("X") for t in asked])).float().to(device)
            try:
                fit = confidence(trials, y_pop).view(R, cfg.popsize)
            except QueryBudgetExceeded:
                refused = True
                break
            for r, (a, t) in enumerate(zip(runs, asked)):
                t.set("F", -fit[r].numpy()[:, None])
                a.tell(infills=t)

        best, scores = [], []
        for a in runs:
            i = int(np.argmin(a.pop.get("F")[:, 0]))
            best.append(a.pop.get("X")[i])
            scores.append(-float(a.pop.get("F")[i, 0]))
        return torch.from_numpy(np.stack(best)).float().to(device), torch.tensor(scores), refused



@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(C2FMI)
