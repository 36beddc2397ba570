"""NES: score-based black-box inversion in the prior's latent space.

The target is only queried for its confidence vector. The gradient of the identity loss
``-log p_y(G(z))`` w.r.t. z is estimated with natural evolution strategies (antithetic Gaussian
sampling; Ilyas et al., ICML 2018, https://arxiv.org/abs/1804.08598), as black-box MI attacks in the
latent space of a public GAN do; the prior term ``-D(G(z))`` is the attacker's own network and is
differentiated exactly. Every query is counted against the target's budget: ``2 * pairs`` per latent
per iteration (the population).

Options, as Deep-BMI-style black-box attacks vary them: ``antithetic`` (mirrored samples, the default, or
independent ones with a mean baseline), ``pairs`` (half the population), ``sigma``, and ``optimizer``: a step
on the estimated gradient (``adam``, ``sgd``), or any derivative-free optimiser of nevergrad
(``nevergrad:<name>``, e.g. ``nevergrad:CMA``, ``nevergrad:TwoPointsDE``, ``nevergrad:PSO``), one per latent,
asked for the same population per step (so the same queries per iteration), bounded to ``[-clip, clip]``.

Planning within a query budget (ours, not in Ilyas et al.). Given a budget (``target.budget``, public knowledge
of an API quota), the attack sizes itself with :func:`~invertkit.core.interfaces.access.affordable` rather than
running until the wrapper refuses: the latents advance together and cost the same, so what is left is split
evenly across them (``share = 1 / rows``) and the run is cut to the iterations that share buys
(``planned_iterations``; a nevergrad optimiser is given that budget of candidates); where not even one
iteration of ``pairs`` fits, one iteration of the pairs that do (``planned_pairs``); with none, the latents stay
at their start (score ``-inf``). Whatever was cut, ``extras["exhausted"]`` is True. A refusal
(``QueryBudgetExceeded``) still ends the run with what it has. Without a budget nothing changes.
"""

from __future__ import annotations

import difflib

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from invertkit.core.errors import QueryBudgetExceeded
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.access import affordable
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.optim import nes_gradient, optimise


class NES(Attack):
    name = "nes"
    paper = "https://arxiv.org/abs/1804.08598"
    summary = "Black-box (scores): NES gradient estimates of the identity loss in a GAN prior's latent space."
    requires = frozenset({C.PROBS})

    class Config(AttackConfig):
        iterations: int = Field(200, ge=1, description="optimisation steps")
        pairs: int = Field(10, ge=1, description="antithetic sample pairs per step (2*pairs queries per latent)")
        sigma: float = Field(0.1, gt=0, description="NES smoothing radius in latent space")
        lr: float = Field(0.05, gt=0, description="Adam step size")
        prior_weight: float = Field(0.01, ge=0, description="weight of the (exact) prior loss -D(G(z))")
        clip: float | None = Field(1.5, gt=0, description="z clamped to [-clip, clip] after each step")
        antithetic: bool = Field(True, description="mirrored samples u, -u (else independent, mean baseline)")
        optimizer: str = Field("adam", description="'adam' or 'sgd' on the NES gradient, or 'nevergrad:<name>' "
                               "(a nevergrad optimiser searching each latent directly, e.g. nevergrad:CMA)")

        @field_validator("optimizer")
        @classmethod
        def _optimizer(cls, v: str) -> str:
            if v in ("adam", "sgd"):
                return v
            kind, _, name = v.partition(":")
            if kind != "nevergrad" or not name:
                raise ValueError(f"'{v}': give 'adam', 'sgd' or 'nevergrad:<optimizer name>'")
            import nevergrad as ng

            if name not in ng.optimizers.registry:
                near = difflib.get_close_matches(name, list(ng.optimizers.registry), n=1)
                raise ValueError(f"nevergrad has no optimizer '{name}'" + (f"; did you mean '{near[0]}'?" if near else ""))
            return v

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        cfg = self.config
        z0 = prior.sample_latent(len(labels), generator)
        y = labels.to(prior.device)

        def identity_loss(zz: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return F.nll_loss(target.log_probs(prior.decode(zz, yy)), yy, reduction="none")

        def prior_loss(zz: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
            if cfg.prior_weight > 0 and prior.has_discriminator:
                with torch.no_grad():
                    return -cfg.prior_weight * prior.realism(prior.decode(zz, yy))
            return torch.zeros(len(zz), device=zz.device)

        # the plan: every latent's share of what is left of the budget (all of the configured run without one)
        n = len(labels)
        iterations, pairs = cfg.iterations, cfg.pairs
        if target.budget is not None:
            iterations = affordable(target, cfg.iterations, each=2 * cfg.pairs, share=1.0 / n)
            if iterations == 0:  # not one iteration of ``pairs``: one of the pairs that fit, if any
                pairs = affordable(target, cfg.pairs, each=2, share=1.0 / n)
                iterations = 1 if pairs else 0
        cut = iterations < cfg.iterations or pairs < cfg.pairs
        if iterations == 0:
            z = z0.clamp(-cfg.clip, cfg.clip) if cfg.clip is not None else z0
            loss, exhausted = torch.full((n,), float("inf")), False
        elif cfg.optimizer.startswith("nevergrad:"):
            z, loss, exhausted = self._nevergrad(z0, y, identity_loss, prior_loss, seed, iterations, pairs)
        else:
            z, loss, exhausted = self._estimated(z0, y, identity_loss, prior, generator, iterations, pairs)
        with torch.no_grad():
            images = prior.decode(z, y)
        return AttackResult(self.name, images, labels, -loss.cpu(), 0, 0.0, seed, {}, latents=z,
                            extras={"exhausted": bool(exhausted or cut), "planned_iterations": iterations,
                                    "planned_pairs": pairs})

    def _estimated(self, z0, y, identity_loss, prior, generator, iterations: int, pairs: int):  # noqa: ANN001, ANN202
        """The NES gradient estimate with ``pairs``, and ``iterations`` steps of ``optimizer`` on it (the prior term
        differentiated exactly)."""
        cfg = self.config

        def estimate(z: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            yy = y[idx].repeat_interleave(2 * pairs)
            loss, grad = nes_gradient(lambda zz: identity_loss(zz, yy), z, sigma=cfg.sigma, pairs=pairs,
                                      generator=generator, antithetic=cfg.antithetic)
            if cfg.prior_weight > 0 and prior.has_discriminator:
                zz = z.detach().requires_grad_(True)
                realism = prior.realism(prior.decode(zz, y[idx]))
                (g_prior,) = torch.autograd.grad(-cfg.prior_weight * realism.sum(), zz)
                grad = grad + g_prior
                loss = loss - cfg.prior_weight * realism.detach()
            return loss, grad

        out = optimise(z0, iterations=iterations, lr=cfg.lr, optimizer=cfg.optimizer, momentum=0.0,
                       estimate=estimate,
                       project=(lambda z: z.clamp(-cfg.clip, cfg.clip)) if cfg.clip is not None else None)
        return out.params, out.loss, out.exhausted

    def _nevergrad(self, z0, y, identity_loss, prior_loss, seed, iterations: int, pairs: int):  # noqa: ANN001, ANN202
        """One nevergrad optimiser per latent (budget ``iterations * 2 * pairs``), each asked for ``2 * pairs``
        candidates per step for ``iterations`` steps; every step's candidates of all latents are one batch of
        queries. The loss is the identity loss plus the prior term;
        each latent's result is its optimiser's recommendation (for the noise-free losses here, the best
        candidate it was told)."""
        import nevergrad as ng

        cfg = self.config
        name = cfg.optimizer.partition(":")[2]
        n, shape = len(z0), tuple(z0.shape[1:])
        pop = 2 * pairs
        opts = []
        if cfg.clip is not None:
            z0 = z0.clamp(-cfg.clip, cfg.clip)  # nevergrad's bounded arrays start inside their bounds
        for i in range(n):
            param = ng.p.Array(init=z0[i].cpu().numpy().astype("float64"))
            if cfg.clip is not None:
                param.set_bounds(-cfg.clip, cfg.clip)
            param.set_mutation(sigma=cfg.sigma)
            param.random_state.seed(seed * 100_003 + i)
            opts.append(ng.optimizers.registry[name](parametrization=param, budget=iterations * pop,
                                                     num_workers=pop))
        best = torch.full((n,), float("inf"))
        best_z = z0.detach().clone()
        exhausted = False
        for _ in range(iterations):
            cands = [[o.ask() for _ in range(pop)] for o in opts]
            zz = torch.tensor([[c.value for c in row] for row in cands], dtype=z0.dtype).reshape(n * pop, *shape)
            zz = zz.to(z0.device)
            yy = y.repeat_interleave(pop)
            try:
                values = (identity_loss(zz, yy) + prior_loss(zz, yy)).reshape(n, pop).cpu()
            except QueryBudgetExceeded:
                exhausted = True
                break
            for i, (o, row) in enumerate(zip(opts, cands)):
                for c, v in zip(row, values[i].tolist()):
                    o.tell(c, v)
                j = int(values[i].argmin())
                if float(values[i, j]) < float(best[i]):
                    best[i] = values[i, j]
                    best_z[i] = zz.view(n, pop, *shape)[i, j]
        return best_z, best, exhausted


@hookimpl
def invertkit_register_attacks(register) -> None:
    register(NES)
