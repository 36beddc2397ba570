"""BREP-MI: Boundary-Repelling Model Inversion, a label-only attack (Kahla et al., "Label-Only Model Inversion
Attacks via Boundary Repulsion", CVPR 2022, https://arxiv.org/abs/2203.01925).

Follows the official code, https://github.com/m-kahla/Label-Only-Model-Inversion-Attacks-via-Boundary-Repulsion
(``brep_mi.py``: ``gen_points_on_sphere``, ``attack_single_target``; ``brep_mi_utils.py``:
``gen_initial_points_targeted``, ``is_target_class``; defaults from ``config2.yaml``). The target is asked for
nothing but its predicted label, and every label counts against its budget.

For each row of ``labels`` (identity ``y``; several rows of one identity are restarts, each with its own initial
point):

1. **Initial point.** Draw batches of ``init_batch`` latents ``z ~ N(0, I)`` clamped to ``[-clip, clip]``, decode
   them with the public prior and ask the target for their labels until one is labelled ``y`` (official
   ``gen_initial_points_targeted``: batches of 256, clamp [-1.5, 1.5]).
2. **Boundary repulsion.** At the current latent ``z`` with sphere radius ``R`` (initially 2): step size
   ``min(R / 3, 3)``; draw ``N = 32`` points ``z + R u / |u|`` on the sphere (``u`` Gaussian), ask their labels
   (``+1`` labelled ``y``, ``-1`` otherwise). If the sum of those signs exceeds ``0.75 N`` (at least 29 of 32 in
   the class) the radius grows, ``R <- 1.3 R``. The update direction is the mean over all ``N`` points of
   ``w_i u_i`` divided by the (possibly grown) radius, with ``w_i = (s_i - 1) / 2`` (``-1`` for a point outside
   the class, ``0`` inside: *repulsion only*; ``repulsion_only=False`` uses ``w_i = s_i``). The candidate
   ``clamp(z + step * direction, -1.5, 1.5)`` is labelled once more: kept if it is labelled ``y``, dropped
   (the next sphere is drawn from the same ``z``) otherwise.
3. **Termination.** A latent stops after ``max_iters_at_radius = 1000`` accepted steps without a radius growth
   (official ``max_iters_at_radius_before_terminate``). Neither a growth step nor a rejected step counts as an
   iteration (as in the official loop, which ``break``s out of its inner loop in both cases without
   incrementing ``current_iter``).
4. **Output.** The official code scores, for each identity, the point where the radius last grew
   (``point_before_inc_radius`` / ``last_success_on_eval``): ``output="last-growth"`` (default) returns that
   latent; a latent whose radius never grew returns its final point. ``output="final"`` returns the last
   accepted point. A row's ``score`` is the radius whose sphere was (at least 75 %) in the class where the
   radius last grew, the attack's own measure of how deep inside the class it got (0 for a row whose radius
   never grew or whose initial point was never found).

Queries: ``N + 1`` labels per step and latent, plus the initial search (``init_batch`` per batch). ``extras``
records, per row of ``labels``: ``final_radius`` (the sphere radius when the search stopped),
``output_radius``, ``growths``, ``steps`` (spheres drawn), ``accepted``, ``initial_found``, and the query split
``init_queries`` / ``search_queries``.

Deliberate differences from the official code:

* The latents of all rows are searched together, one vectorised step for every active latent at a time (the
  official code attacks identities one after another); each latent keeps its own radius, counters and stopping
  rule, so the algorithm per latent is unchanged.
* Targeted initial points for repeated identities: one batch of 256 labelled latents may serve several rows
  (each a distinct latent) and several identities, as the official targeted search shares its batches between
  identities; the official code attacks each identity once. ``init_max_batches`` (default 100, i.e. 25,600
  queries per unfilled row set) bounds the search, which the official code runs until it succeeds: a row whose
  identity is never hit keeps an unsearched random latent and ``initial_found`` False. With a conditional prior
  (``decode(z, y)``), each batch is decoded with the label of one identity still waiting, in turn.
* Safety bounds the official loop lacks (it can run forever when every step is rejected or the radius grows
  at every step): ``max_steps`` (spheres drawn per latent) and ``max_radius`` (a latent stops once its radius
  exceeds it), both ``None`` (unbounded, as the official code) by default. A query budget on the target also
  ends a run, with what it has: a refused query ends the initial search (rows not yet found keep a random
  latent) or the sphere search (every latent keeps the point and radius of its last complete step), and
  ``extras["exhausted"]`` says so.
* **Planning within a query budget** (our addition; the paper and the official code have no budget). When the
  target has a budget (``target.budget``, public like any API quota), each identity is given its own allowance
  of label queries, an equal share of what is left of the budget when the attack starts
  (:func:`~invertkit.core.interfaces.access.affordable` with ``share = 1 / identities``), and its initial-point
  search and its sphere search are paid from it: a batch of the initial search is split equally between the
  waiting identities it serves (a conditional prior's batch is its one identity's), shrunk to what they can
  still pay, and an identity that cannot pay one more label stops waiting; a latent takes a sphere step only
  while its identity can pay ``N + 1`` labels (an identity's rows take it in order while the allowance lasts).
  An identity that is done (every row terminated or never found) leaves what it did not spend to the identities
  still searching, in equal parts (a share of ``1 / identities left``). A smaller budget thus gives every
  identity a shorter search of its own, where unplanned an identity with more rows, or one whose initial points
  are hard to draw, takes the others' share, and the refused query ends every search at once. A search cut
  short keeps its best point so far (the last growth, or the last accepted point) and ``extras["exhausted"]``
  is True, with ``planned_queries_per_identity`` (the initial allowance), ``identities_cut`` (stopped for their
  allowance) and ``queries_per_identity``. Without a budget nothing changes (same queries, same images).
* The latent dimension is the prior's (the official code: 100 for its CelebA GAN); ``clip`` is the official
  [-1.5, 1.5] whatever the prior.
* No evaluation model is consulted during the search (the official loop logs its decision at every step but
  never uses it to steer); the logging of the target's cross-entropy loss (which would need scores) is left out.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.errors import QueryBudgetExceeded
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.access import affordable
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.optim import batched


class Allowances:
    """Each identity's allowance of label queries under the target's budget (module docstring, "Planning within a
    query budget"): ``index`` maps every row to its identity; ``cap - spent`` is what an identity may still spend.
    Amounts are floats (a shared batch is split equally); the sum of the caps never exceeds what was left of the
    budget, so the wrapper refuses nothing to a plan it made."""

    EPS = 1e-6

    def __init__(self, target: Any, labels: Tensor) -> None:
        ids, self.index = torch.unique(labels, return_inverse=True)
        self.ids = ids.tolist()
        k = max(1, len(self.ids))
        #: what each identity may spend at the start: an equal share of what is left of the budget
        self.planned = affordable(target, 2**62, share=1.0 / k)
        self.cap = torch.full((k,), float(self.planned), dtype=torch.float64)
        self.spent = torch.zeros(k, dtype=torch.float64)
        self.released = torch.zeros(k, dtype=torch.bool)
        self.cut = torch.zeros(k, dtype=torch.bool)  # an identity stopped for its allowance

    def left(self) -> Tensor:
        return (self.cap - self.spent).clamp(min=0.0)

    def affordable_units(self, cost: float) -> Tensor:
        """Per identity: how many items of ``cost`` queries it can still pay."""
        return torch.floor(self.left() / cost + self.EPS).long()

    def pay(self, identities: Tensor, amount: float | Tensor) -> None:
        self.spent.index_add_(0, identities, torch.as_tensor(amount, dtype=torch.float64).expand(len(identities)))

    def release(self, searching: Tensor) -> None:
        """Identities with no row still ``searching`` (a row mask) are done: what they did not spend goes, in equal
        parts, to the identities still searching."""
        has = torch.bincount(self.index[searching], minlength=len(self.cap)) > 0
        done = ~has & ~self.released
        if not bool(done.any()):
            return
        freed = float(self.left()[done].sum())
        self.cap[done] = torch.minimum(self.cap[done], self.spent[done])
        self.released |= done
        heirs = has & ~self.released
        if bool(heirs.any()):
            self.cap[heirs] += freed / int(heirs.sum())

    def select(self, idx: Tensor, cost: int) -> Tensor:
        """The rows of ``idx`` (ascending) whose identity can pay ``cost`` for them, each identity's in order."""
        g = self.index[idx]
        order = torch.argsort(g, stable=True)
        counts = torch.bincount(g, minlength=len(self.cap))
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(idx)
        rank[order] = torch.arange(len(idx)) - starts[g[order]]
        units = self.affordable_units(cost)
        return idx[rank < units[g]]

    def mark_cut(self, rows: Tensor) -> None:
        """The identities of ``rows`` (a row mask) were stopped for their allowance."""
        self.cut |= torch.bincount(self.index[rows], minlength=len(self.cap)) > 0

    def facts(self) -> dict[str, Any]:
        return {"planned_queries_per_identity": int(self.planned), "identities_cut": int(self.cut.sum()),
                "queries_per_identity": {c: int(round(float(q))) for c, q in zip(self.ids, self.spent.tolist())}}


class BREPMI(Attack):
    """BREP-MI (Kahla et al., CVPR 2022): label-only boundary repulsion in a public GAN's latent space.

    Defaults are the official ``config2.yaml`` and ``brep_mi.py``: ``sphere_points_count: 32``,
    ``current_sphere_radius: 2``, ``sphere_expansion_coeff: 1.3``, ``point_clamp_min/max: -1.5/1.5``,
    ``max_iters_at_radius_before_terminate: 1000``, ``batch_dim_for_initial_points: 256``,
    ``repulsion_only: True``. Hard-coded in ``brep_mi.py``'s ``attack_single_target``: ``step_size =
    min(current_sphere_radius / 3, 3)`` (line 53, before any growth); the growth test
    ``new_points_classification.sum() > 0.75 * sphere_points_count`` on the +1/-1 labels (line 63; the paper's
    "all points inside" test, ``== sphere_points_count``, is commented out there: ``growth_threshold`` anywhere in
    ``((N - 2) / N, 1)``, e.g. 0.99 for N = 32, restores it), then ``R *= sphere_expansion_coeff`` (line 67);
    the direction ``mean((s - 1) / 2 * u) / R`` with the updated ``R`` (lines 75-78); the clamp of the candidate
    (line 82); the candidate dropped when labelled another class (lines 85-87). Initial points: ``randn`` clamped
    to the same range (``brep_mi_utils.py``, ``gen_initial_points_targeted``, line 85).
    """

    name = "brep-mi"
    paper = "https://arxiv.org/abs/2203.01925"
    summary = ("Label-only: boundary repulsion in a GAN prior's latent space, stepping away from sphere points "
               "labelled another class and growing the sphere while it stays inside the identity.")
    requires = frozenset({C.LABEL})

    class Config(AttackConfig):
        """The official defaults (``config2.yaml``, ``brep_mi.py``); see the class docstring."""

        sphere_points: int = Field(32, ge=1, description="points sampled on the sphere per step (official: 32)")
        initial_radius: float = Field(2.0, gt=0, description="initial sphere radius (official: 2)")
        expansion: float = Field(1.3, gt=1, description="radius multiplier when the sphere is inside the class "
                                                         "(official sphere_expansion_coeff: 1.3)")
        growth_threshold: float = Field(0.75, ge=-1, lt=1, description="the radius grows when the mean of the "
                                        "points' +1/-1 labels exceeds this (official: sum > 0.75 * N, i.e. 29/32)")
        step_divisor: float = Field(3.0, gt=0, description="step size = min(R / step_divisor, max_step) (official: 3)")
        max_step: float = Field(3.0, gt=0, description="largest step size (official: 3)")
        clip: float | None = Field(1.5, gt=0, description="latents clamped to [-clip, clip] at the start and after "
                                                         "each step (official point_clamp_min/max: -1.5/1.5)")
        max_iters_at_radius: int = Field(1000, ge=1, description="a latent stops after this many accepted steps "
                                         "without growth (official max_iters_at_radius_before_terminate: 1000)")
        repulsion_only: bool = Field(True, description="move away from points outside the class only (official: "
                                                       "True); False also moves towards the points inside")
        output: Literal["last-growth", "final"] = Field("last-growth", description="the latent returned: where the "
                                                        "radius last grew (official evaluation) or the last point")
        init_batch: int = Field(256, ge=1, description="latents labelled per batch of the initial-point search "
                                                      "(official batch_dim_for_initial_points: 256)")
        init_max_batches: int = Field(100, ge=1, description="batches of the initial-point search before a row is "
                                                             "given up (official: unbounded)")
        max_steps: int | None = Field(None, ge=1, description="spheres drawn per latent at most (None: unbounded, "
                                                              "as the official code)")
        max_radius: float | None = Field(None, gt=0, description="a latent stops once its radius exceeds this "
                                                                 "(None: unbounded, as the official code)")
        query_batch: int = Field(4096, ge=1, description="images decoded and labelled per target call")

    # ------------------------------------------------------------------------------------------ helpers
    def _labels(self, target: Any, prior: Any, z: Tensor, y: Tensor | None) -> Tensor:
        """The target's labels of ``decode(z, y)`` (one query per row), on the CPU."""
        out = [torch.zeros(0, dtype=torch.long)]
        with torch.no_grad():
            for sl in (batched(len(z), self.config.query_batch) if len(z) else []):
                x = prior.decode(z[sl].to(prior.device), None if y is None else y[sl].to(prior.device))
                out.append(target.label(x).reshape(-1).long().cpu())
        return torch.cat(out)

    def _clip(self, z: Tensor) -> Tensor:
        c = self.config.clip
        return z if c is None else z.clamp(-c, c)

    def _initial_points(self, target: Any, prior: Any, labels: Tensor, generator: torch.Generator,
                        allow: Allowances | None = None) -> tuple[Tensor, Tensor, bool]:
        """Targeted initial latents, one per row (official ``gen_initial_points_targeted``): batches of clamped
        Gaussian latents are labelled until every row has a distinct latent labelled with its identity.
        Returns ``(z, found, refused)``; a row not found keeps a random (clamped) latent. With ``allow`` (a
        budget) the batches are paid from the identities' allowances (module docstring)."""
        cfg = self.config
        n = len(labels)
        z = self._clip(prior.sample_latent(n, generator)).cpu()
        found = torch.zeros(n, dtype=torch.bool)
        gave_up = torch.zeros(n, dtype=torch.bool)  # rows whose identity cannot pay for another label
        conditional = bool(getattr(prior, "conditional", False))
        for b in range(cfg.init_max_batches):
            size = cfg.init_batch
            if allow is not None:  # identities that cannot pay one more label stop waiting
                stop = ~found & ~gave_up & (allow.affordable_units(1.0) < 1)[allow.index]
                allow.mark_cut(stop)
                gave_up |= stop
            waiting = (~found & ~gave_up).nonzero().flatten()
            if len(waiting) == 0:
                break
            idents = sorted(set(labels[waiting].tolist()))
            if conditional:  # one waiting identity per batch, in turn
                idents = [idents[b % len(idents)]]
            payers = None
            if allow is not None:  # the batch is split equally between the identities it serves
                payers = torch.unique(allow.index[waiting[torch.isin(labels[waiting], torch.tensor(idents))]])
                can = int(torch.floor(allow.left()[payers].min() * len(payers) + Allowances.EPS))
                size = min(size, can)
            zb = self._clip(prior.sample_latent(size, generator)).cpu()
            try:
                if conditional:
                    pred = self._labels(target, prior, zb, torch.full((size,), idents[0], dtype=torch.long))
                else:
                    pred = self._labels(target, prior, zb, None)
            except QueryBudgetExceeded:  # the budget ends the search: the rows found so far keep their points
                return z, found, True
            if payers is not None:
                allow.pay(payers, size / len(payers))
            for c in idents:
                rows = waiting[labels[waiting] == c]
                hits = (pred == c).nonzero().flatten()[: len(rows)]
                rows = rows[: len(hits)]
                z[rows] = zb[hits]
                found[rows] = True
        return z, found, False

    # --------------------------------------------------------------------------------------------- run
    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        cfg = self.config
        labels = labels.long().cpu()
        n, N = len(labels), cfg.sphere_points
        q0 = target.queries
        # under a budget each identity is given its allowance (our addition; module docstring)
        allow = Allowances(target, labels) if getattr(target, "budget", None) is not None and n else None
        z, found, refused = self._initial_points(target, prior, labels, generator, allow)
        init_queries = target.queries - q0
        exhausted = refused or bool(getattr(target, "exhausted", False))

        latent_dims = tuple(range(2, z.dim() + 1))  # the latent's own dims in a (rows, N, *latent) tensor
        radius = torch.full((n,), float(cfg.initial_radius), dtype=torch.float64)
        out_z = z.clone()
        out_radius = torch.zeros(n, dtype=torch.float64)  # radius verified at the returned point
        grown = torch.zeros(n, dtype=torch.bool)
        iters = torch.zeros(n, dtype=torch.long)  # the official current_iter: accepted steps without growth
        last_change = torch.zeros(n, dtype=torch.long)  # the official last_iter_when_radius_changed
        steps = torch.zeros(n, dtype=torch.long)
        accepted = torch.zeros(n, dtype=torch.long)
        growths = torch.zeros(n, dtype=torch.long)

        def running() -> Tensor:
            alive = found & (iters - last_change < cfg.max_iters_at_radius)
            if cfg.max_steps is not None:
                alive &= steps < cfg.max_steps
            if cfg.max_radius is not None:
                alive &= radius <= cfg.max_radius
            return alive

        while True:
            alive = running()
            idx = alive.nonzero().flatten()
            if allow is not None:  # identities done leave their allowance to the others; a step is paid for
                allow.release(alive)
                idx = allow.select(idx, N + 1)
                if len(idx) == 0:  # the latents still searching have spent their identities' allowances
                    allow.mark_cut(alive)
            if len(idx) == 0:
                break
            m = len(idx)
            za, ra, ya = z[idx], radius[idx], labels[idx]
            r = ra.to(z.dtype).view(m, *([1] * (z.dim() - 1)))
            step = torch.clamp(ra / cfg.step_divisor, max=cfg.max_step).to(z.dtype).view_as(r)
            # points on the sphere of radius R around z (official gen_points_on_sphere)
            u = torch.randn((m, N, *z.shape[1:]), generator=generator, dtype=z.dtype)
            norms = u.pow(2).sum(dim=latent_dims, keepdim=True).sqrt()
            u = u * (r.unsqueeze(1) / norms)
            points = (za.unsqueeze(1) + u).reshape(m * N, *z.shape[1:])
            try:
                inside = self._labels(target, prior, points, ya.repeat_interleave(N)).view(m, N) == ya.unsqueeze(1)
                sign = inside.to(z.dtype) * 2 - 1
                grow = sign.sum(1) > cfg.growth_threshold * N
                new_ra = torch.where(grow, ra * cfg.expansion, ra)
                weight = (sign - 1) / 2 if cfg.repulsion_only else sign
                shape = (m, N, *([1] * (z.dim() - 1)))
                # the official code divides by the radius after its update (a grown sphere's step is 1/1.3 shorter)
                direction = (weight.view(shape) * u).mean(1) / new_ra.to(z.dtype).view_as(r)
                candidate = self._clip(za + step * direction)
                ok = self._labels(target, prior, candidate, ya) == ya
            except QueryBudgetExceeded:  # the budget ends the run with the points of the last complete step
                exhausted = True
                break
            if allow is not None:
                allow.pay(allow.index[idx], float(N + 1))
            radius[idx] = new_ra
            last_change[idx[grow]] = iters[idx[grow]]
            growths[idx] += grow.long()
            steps[idx] += 1
            keep = idx[ok]
            z[keep] = candidate[ok]
            accepted[keep] += 1
            iters[idx[ok & ~grow]] += 1
            mark = idx[ok & grow]  # the official point_before_inc_radius, with the radius it passed
            out_z[mark] = candidate[ok & grow]
            out_radius[mark] = ra[ok & grow]
            grown[mark] = True

        keep_last = grown.view(-1, *([1] * (z.dim() - 1))) & (cfg.output == "last-growth")
        result_z = torch.where(keep_last, out_z, z)
        score = out_radius  # 0 where the radius never grew (or no initial point was found)
        with torch.no_grad():
            images = torch.cat([torch.zeros((0, *prior.image_shape))] + [
                prior.decode(result_z[sl].to(prior.device), labels[sl].to(prior.device)).cpu()
                for sl in (batched(n, cfg.query_batch) if n else [])])
        extras = {
            "final_radius": radius.tolist(),
            "output_radius": score.tolist(),
            "growths": growths.tolist(),
            "steps": steps.tolist(),
            "accepted": accepted.tolist(),
            "initial_found": found.tolist(),
            "init_queries": int(init_queries),
            "search_queries": int(target.queries - q0 - init_queries),
            "exhausted": exhausted,
        }
        if allow is not None:
            extras.update(allow.facts())
            extras["exhausted"] = exhausted or bool(allow.cut.any())
        return AttackResult(self.name, images, labels, score.float(), 0, 0.0, seed, {}, latents=result_z, extras=extras)


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(BREPMI)
