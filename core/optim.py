"""The one optimisation loop every latent- or pixel-space attack shares.

An attack states only its objective: a per-sample loss to *minimise*, either differentiable (the loop
takes gradients with autograd) or paired with its own gradient estimate (a black-box estimator, which
counts its own queries through the target). The loop owns the optimiser, the projection after each
step, per-sample early stopping, the best-so-far bookkeeping, and batching over all identities x
restarts at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from invertkit.core.errors import NonFiniteError, QueryBudgetExceeded

#: ``objective(params, index) -> per-sample loss`` (differentiable in params). ``index`` are the rows of
#: the full batch that ``params`` holds (identities/labels are looked up by it).
Objective = Callable[[Tensor, Tensor], Tensor]
#: ``estimate(params, index) -> (per-sample loss, gradient)``: for attacks without autograd access.
Estimator = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass
class LoopResult:
    params: Tensor  # the final (or best, if keep_best) parameters, detached
    #: per-sample loss: with keep_best, of the returned (best) parameters; otherwise as last evaluated, i.e.
    #: before the final step (evaluating once more would cost a black-box attack one more round of queries)
    loss: Tensor
    iterations: Tensor  # per-sample iterations actually run
    #: the target's query budget ran out: the loop ended there, with what it had
    exhausted: bool = False


def make_optimizer(kind: str, params: Tensor, lr: float, momentum: float = 0.9, betas=(0.9, 0.999)) -> torch.optim.Optimizer:  # noqa: ANN001
    if kind == "sgd":
        return torch.optim.SGD([params], lr=lr, momentum=momentum)
    if kind == "nesterov":
        return torch.optim.SGD([params], lr=lr, momentum=momentum, nesterov=True)
    if kind == "adam":
        return torch.optim.Adam([params], lr=lr, betas=betas)
    raise ValueError(f"unknown optimizer '{kind}' (sgd, nesterov, adam)")


def optimise(
    init: Tensor,
    *,
    iterations: int,
    lr: float,
    objective: Objective | None = None,
    estimate: Estimator | None = None,
    optimizer: str = "adam",
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    loss_scale: float = 1.0,
    project: Callable[[Tensor], Tensor] | None = None,
    keep_best: bool = False,
    patience: int | None = None,
    stop_below: float | None = None,
) -> LoopResult:
    """Minimise a per-sample loss over a batch of independent parameter rows.

    ``betas`` are Adam's (PPA and IF-GMI run (0.1, 0.1)).
    ``loss_scale`` multiplies every sample's gradient (GMI averages over a batch of 60, i.e. 1/60).
    ``patience``: a sample stops once its loss has not improved on its best for that many steps.
    ``stop_below``: a sample stops once its loss is at or below this value. Stopped samples are no longer
    evaluated (a black-box target is no longer queried for them).

    When the target refuses a query past its budget (:class:`~invertkit.core.errors.QueryBudgetExceeded`), the
    loop ends there with what it has (the best, or the current, parameters; the refused step changes nothing)
    and says so (``exhausted``): a budget is a stopping rule, not a failure.
    """
    if (objective is None) == (estimate is None):
        raise ValueError("give exactly one of objective / estimate")
    params = init.detach().clone().requires_grad_(True)
    opt = make_optimizer(optimizer, params, lr, momentum, betas)
    n = params.shape[0]
    all_idx = torch.arange(n, device=params.device)
    active = torch.ones(n, dtype=torch.bool, device=params.device)
    # losses are kept in the parameters' dtype (a float64 problem must not fail on a float32 buffer)
    best_loss = torch.full((n,), float("inf"), device=params.device, dtype=params.dtype)
    best = params.detach().clone()
    since_best = torch.zeros(n, dtype=torch.long, device=params.device)
    ran = torch.zeros(n, dtype=torch.long, device=params.device)
    last_loss = torch.full((n,), float("inf"), device=params.device, dtype=params.dtype)
    exhausted = False
    for _ in range(iterations):
        if not bool(active.any()):
            break
        idx = all_idx[active]
        opt.zero_grad(set_to_none=True)
        try:
            if objective is not None:
                sub = params[idx] if idx.numel() < n else params
                loss = objective(sub, idx)
                (loss.sum() * loss_scale).backward()
                loss = loss.detach()
            else:
                sub = params.detach()[idx]
                loss, grad = estimate(sub, idx)  # type: ignore[misc]
                full = torch.zeros_like(params)
                full[idx] = grad.to(full.dtype) * loss_scale
                params.grad = full
        except QueryBudgetExceeded:
            exhausted = True
            break
        loss = loss.detach().to(device=params.device, dtype=params.dtype)
        if not bool(torch.isfinite(loss).all()):
            raise NonFiniteError("the attack objective became NaN or infinite")
        # the loss was measured at the parameters *before* this step: record them as candidates
        improved = loss < best_loss[idx]
        if keep_best:
            best[idx[improved]] = params.detach()[idx[improved]]
        best_loss[idx] = torch.where(improved, loss, best_loss[idx])
        since_best[idx] = torch.where(improved, torch.zeros_like(since_best[idx]), since_best[idx] + 1)
        last_loss[idx] = loss
        ran[idx] += 1
        if params.grad is not None and idx.numel() < n:
            params.grad[~active] = 0.0
        frozen = params.detach()[~active].clone() if idx.numel() < n else None
        opt.step()
        with torch.no_grad():
            if project is not None:
                params.copy_(project(params))
            if frozen is not None:
                # after the projection: neither momentum nor a non-idempotent projection (a denoising blur)
                # may move a stopped sample
                params[~active] = frozen
        stop = torch.zeros_like(active)
        if patience is not None:
            stop |= since_best >= patience
        if stop_below is not None:
            stop |= best_loss <= stop_below
        active &= ~stop
    if keep_best:
        return LoopResult(best, best_loss, ran, exhausted)
    return LoopResult(params.detach(), last_loss, ran, exhausted)


def batched(n: int, batch_size: int | None) -> list[slice]:
    """Slices covering ``range(n)`` in chunks of ``batch_size`` (one chunk when ``None``)."""
    if not batch_size or batch_size >= n:
        return [slice(0, n)]
    return [slice(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]


def nes_gradient(
    f: Callable[[Tensor], Tensor],
    params: Tensor,
    *,
    sigma: float,
    pairs: int,
    generator: torch.Generator,
    antithetic: bool = True,
) -> tuple[Tensor, Tensor]:
    """Natural-evolution-strategies gradient estimate (Ilyas et al. 2018, https://arxiv.org/abs/1804.08598).

    Antithetic (the default): ``g = 1/(2 sigma P) sum_j [f(p + sigma u_j) - f(p - sigma u_j)] u_j``. Otherwise
    ``2 P`` independent directions with the mean value as baseline (Wierstra et al.'s variance reduction):
    ``g = 1/(2 sigma P) sum_j [f(p + sigma u_j) - mean f] u_j``. Either way ``f`` (a batch of parameter rows to
    a per-row value) is called once on all ``2 P`` probes of all rows, so the target sees ``2 P`` queries per
    row. Returns ``(mean value, gradient)``.
    """
    n = params.shape[0]
    shape = params.shape[1:]
    if antithetic:
        u = torch.randn((n, pairs, *shape), generator=generator).to(params.device, params.dtype)
        probes = torch.cat([params.unsqueeze(1) + sigma * u, params.unsqueeze(1) - sigma * u], dim=1)
    else:
        u = torch.randn((n, 2 * pairs, *shape), generator=generator).to(params.device, params.dtype)
        probes = params.unsqueeze(1) + sigma * u
    values = f(probes.reshape(n * 2 * pairs, *shape)).reshape(n, 2 * pairs)
    if antithetic:
        diff = values[:, :pairs] - values[:, pairs:]
    else:
        diff = values - values.mean(1, keepdim=True)
    diff = diff.reshape(n, -1, *([1] * (params.dim() - 1)))
    grad = (diff * u).sum(1) / (2 * sigma * pairs)
    return values.mean(1), grad


@torch.no_grad()
def selection_confidences(target, decode: Callable[[Tensor, Tensor | None], Tensor], pool: Tensor,  # noqa: ANN001
                          classes: list[int] | None = None, *, flip: bool = True, batch_size: int = 500) -> Tensor:
    """PPA's initial-selection scores (also IF-GMI's): the target's softmax confidence in every class for each
    latent of ``pool``, averaged over the decoded image and its horizontal flip when ``flip``.

    ``decode(latents, labels)`` renders images. With ``classes`` None the prior is unconditional: one pass
    (``len(pool)`` queries, x2 with the flip) scores every class. With ``classes`` given, the prior is
    conditional: column ``c`` for each ``c`` in ``classes`` comes from decoding the pool with label ``c`` (one
    pass per class) and the other columns are 0. Returns a ``(len(pool), num_classes)`` float32 CPU tensor."""
    table = torch.zeros(len(pool), target.num_classes)
    for y in [None] if classes is None else classes:
        for sl in batched(len(pool), batch_size):
            z = pool[sl]
            yy = None if y is None else torch.full((len(z),), y, dtype=torch.long, device=z.device)
            x = decode(z, yy)
            views = [x, x.flip(-1)] if flip else [x]
            p = (sum(F.softmax(target.logits(v).float(), dim=1) for v in views) / len(views)).cpu()
            if y is None:
                table[sl] = p
            else:
                table[sl, y] = p[:, y]
    return table
