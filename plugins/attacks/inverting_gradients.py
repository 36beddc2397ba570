"""``inverting-gradients`` (and its variant ``dlg``): reconstruction of a participant's batch from its model update,
the server's attack on the ``update`` capability — the ``server:client-K@round-R`` view of a FedSGD federation
(:mod:`invertkit.plugins.targets.federated` with ``local_steps = 1``; withheld under secure aggregation).

Geiping et al., "Inverting Gradients — How easy is it to break privacy in federated learning?", NeurIPS 2020,
arXiv 2003.14053; official code JonasGeiping/invertinggradients, ``inversefed/reconstruction_algorithms.py``
(``GradientReconstructor``, ``DEFAULT_CONFIG``, ``reconstruction_costs``) and ``inversefed/metrics.py``
(``total_variation``): dummy images drawn from N(0, 1) are optimised so that the gradient they produce matches
the client's, under the cosine cost ``1 - <g', g> / (|g'| |g|)`` over all parameters (``cost_fn = 'sim'``,
``indices = 'def'``, equal weights) plus a total-variation prior (mean absolute horizontal and vertical
differences), by Adam (lr 0.1) on the *signed* gradient of the images, the learning rate decayed tenfold at
3/8, 5/8 and 7/8 of the iterations (``MultiStepLR`` at ``max_iterations // 2.667, // 1.6, // 1.142``), the
images boxed to the data range after every step, the best of ``restarts`` kept by its final cost.
Defaults are ``DEFAULT_CONFIG``'s (4,800 iterations, one restart) with two deliberate differences: ``signed``
(the paper's method, Section 4, steps on the sign of the gradient, which ``DEFAULT_CONFIG`` leaves off), and
a TV weight of 1e-4 instead of 1e-1, which on 8x8 digits outweighs the gradient cost (measured on one digit
after 400 iterations: PSNR 8.2 dB at 1e-1, 30.7 dB without TV; the paper tunes the weight per setting).

DLG (Zhu et al., "Deep Leakage from Gradients", NeurIPS 2019, arXiv 1906.08935; mit-han-lab/dlg ``main.py``),
its ancestor, is the ``dlg`` variant (or ``method = 'dlg'``): the squared Euclidean gradient distance, L-BFGS
(lr 1; 300 steps, as ``main.py``), no prior, no box, no sign. Unlike DLG's joint label optimisation, both use the
inferred labels below.

What the attacker sees (the server's view, ``TargetView.update()``, one query, the attack's only one): the global
model it sent, the client's upload, and the protocol's public settings (the local learning rate, the batch size
and the local mode, which the server configures); never the batch. The update gives the gradient,
``(w_global - w_client) / lr``, exactly for one plain SGD step. Labels are inferred from it, never
read from the batch: for one image, iDLG's rule (Zhao et al. 2020, arXiv 2001.02610; Geiping's code applies it
to single images: the class whose row of the last layer's weight gradient sums lowest); for a batch, the count
of each label from the last layer's bias gradient, ``n_c = B (p_c - g_c)`` with ``p_c`` the model's mean
softmax on the attacker's public images (the batch's own probabilities are unknown), rounded to sum to ``B``
(largest remainders) — a deliberate addition: the paper assumes a batch's labels known. The result is one image
per image of the client's batch, labelled with the inferred labels (the bench's requested identities do not
apply: the batch is what it is); ``scores`` is minus the final cost.

The evaluator (the ``batch-recon`` metric, :mod:`invertkit.plugins.metrics.batch_recon`, on the bench's
``paired_reference``: the client's batch, never the attack's) compares each reconstruction with the client's batch
(matched one to one by the Hungarian assignment on pixel MSE, as the images' order is not recoverable): PSNR
(``10 log10(1 / MSE)``), SSIM (:func:`invertkit.plugins.metrics.pixel.ssim`, Wang et al. 2004) and LPIPS (AlexNet, from
:mod:`invertkit.plugins.metrics.lpips_dist`, when its backbone weights are on disk; else reported missing).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack
from invertkit.core.interfaces.capability import Capability
from invertkit.core.interfaces.config import ComponentConfig, build_config
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.interfaces.target import TargetModel


class InversionConfig(ComponentConfig):
    method: Literal["inverting-gradients", "dlg"] = Field("inverting-gradients", description="Geiping et al., or DLG.")
    iterations: int = Field(4800, ge=1, description="max_iterations (DEFAULT_CONFIG: 4800).")
    lr: float | None = Field(None, gt=0, description="Step size; None: 0.1 (Adam) or 1.0 (DLG's L-BFGS).")
    total_variation: float = Field(1e-4, ge=0, description="TV weight (DEFAULT_CONFIG: 1e-1; DLG: none).")
    signed: bool = Field(True, description="Adam on the sign of the images' gradient (the paper's method).")
    restarts: int = Field(1, ge=1, description="Independent trials; the lowest final cost is kept.")
    lr_decay: bool = Field(True, description="x0.1 at 3/8, 5/8, 7/8 of the iterations.")


def update_gradient(base: nn.Module, upload: nn.Module, lr: float) -> dict[str, Tensor]:
    """The gradient one plain SGD step of size ``lr`` took from ``base`` to ``upload``, per parameter."""
    up = dict(upload.named_parameters())
    return {n: ((p.detach() - up[n].detach()) / lr) for n, p in base.named_parameters()}


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("label inference needs a final linear layer")
    return linears[-1]


@torch.no_grad()
def infer_labels(model: nn.Module, grads: dict[str, Tensor], batch_size: int, public: Tensor) -> Tensor:
    """The batch's labels as the update gives them away (see the module's docstring)."""
    name, layer = _last_linear(model)
    gw = grads[f"{name}.weight"]
    if batch_size == 1:
        return gw.sum(dim=1).argmin().reshape(1)
    if layer.bias is None:
        raise ValueError("batch label inference needs the last layer's bias")
    gb = grads[f"{name}.bias"]
    p = torch.softmax(model.eval()(public), dim=1).mean(0)
    est = (batch_size * (p - gb)).clamp(min=0)
    counts = est.floor().long()
    rest = batch_size - int(counts.sum())
    if rest > 0:
        counts[torch.argsort(est - counts, descending=True)[:rest]] += 1
    elif rest < 0:
        for c in torch.argsort(est - counts).tolist():
            if rest == 0:
                break
            if counts[c] > 0:
                counts[c] -= 1
                rest += 1
    return torch.repeat_interleave(torch.arange(len(counts)), counts)


def total_variation(x: Tensor) -> Tensor:
    return (x[:, :, :, :-1] - x[:, :, :, 1:]).abs().mean() + (x[:, :, :-1, :] - x[:, :, 1:, :]).abs().mean()


def _cost(trial: list[Tensor], target: list[Tensor], method: str) -> Tensor:
    if method == "dlg":
        return sum(((a - b) ** 2).sum() for a, b in zip(trial, target, strict=True))
    dot = sum((a * b).sum() for a, b in zip(trial, target, strict=True))
    na = sum(a.pow(2).sum() for a in trial)
    nb = sum(b.pow(2).sum() for b in target)
    return 1 - dot / na.sqrt() / nb.sqrt()


def invert_update(model: nn.Module, grads: dict[str, Tensor], labels: Tensor, shape: tuple[int, ...],
                  config: InversionConfig | dict[str, Any] | None = None, *, seed: int = 0,
                  train_mode: bool = False) -> tuple[Tensor, float]:
    """Images whose gradient on ``model`` (the model the update was computed from, in the mode the client
    used: eval unless ``train_mode``) matches ``grads``, one per label, in ``[0, 1]``; and their final cost."""
    cfg = build_config(InversionConfig, config, what="gradient inversion")
    model = model.train(train_mode)
    params = [p for _, p in model.named_parameters()]
    target = [grads[n].detach() for n, _ in model.named_parameters()]
    dlg = cfg.method == "dlg"
    g = torch.Generator().manual_seed(int(seed))
    best, best_cost = None, math.inf
    for _ in range(cfg.restarts):
        x = torch.randn(len(labels), *shape, generator=g).requires_grad_(True)
        if dlg:
            opt: torch.optim.Optimizer = torch.optim.LBFGS([x], lr=cfg.lr or 1.0)
        else:
            opt = torch.optim.Adam([x], lr=cfg.lr or 0.1)
        n = cfg.iterations
        sched = (torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(n / 2.667), int(n / 1.6), int(n / 1.142)],
                                                      gamma=0.1) if cfg.lr_decay and not dlg else None)

        def closure() -> Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), labels)
            trial = torch.autograd.grad(loss, params, create_graph=True)
            cost = _cost(list(trial), target, cfg.method)
            if cfg.total_variation > 0 and not dlg:
                cost = cost + cfg.total_variation * total_variation(x)
            cost.backward()
            if cfg.signed and not dlg:
                x.grad.sign_()
            return cost

        for _ in range(n):
            opt.step(closure)
            if sched is not None:
                sched.step()
            if not dlg:  # boxed: the data range, [0, 1]
                with torch.no_grad():
                    x.clamp_(0, 1)
        final = float(closure().detach())
        if not math.isfinite(final):
            final = math.inf
        if best is None or final < best_cost:
            best, best_cost = x.detach().clamp(0, 1).clone(), final
    assert best is not None
    return best, best_cost


def match(recon: Tensor, truth: Tensor) -> Tensor:
    """The reconstruction paired with each true image (Hungarian assignment on pixel MSE)."""
    from scipy.optimize import linear_sum_assignment

    cost = ((recon.flatten(1)[:, None] - truth.flatten(1)[None]) ** 2).mean(-1)
    rows, cols = linear_sum_assignment(cost.double().numpy())
    order = torch.empty(len(truth), dtype=torch.long)
    order[torch.as_tensor(cols)] = torch.as_tensor(rows)
    return recon[order]


def scores(recon: Tensor, truth: Tensor) -> dict[str, float]:
    """PSNR, SSIM and (when its weights are on disk) LPIPS of matched reconstructions against the batch."""
    from invertkit.plugins.metrics.pixel import ssim

    paired = match(recon, truth)
    mse = ((paired - truth) ** 2).flatten(1).mean(1).clamp(min=1e-10)
    out = {"psnr": float((10 * torch.log10(1 / mse)).mean()), "ssim": float(ssim(paired, truth).mean())}
    out["lpips"] = _lpips(paired, truth)
    return out


def _lpips(a: Tensor, b: Tensor) -> float:
    from invertkit.core.errors import InvertkitError
    from invertkit.core.metrics import find_weights, to_rgb
    from invertkit.plugins.metrics.lpips_dist import backbone_file, build_lpips

    fname, url = backbone_file("alex")
    try:
        net = build_lpips("alex", find_weights(fname, None, what="LPIPS alex backbone", url=url,
                                               option="backbone_weights"))
    except (InvertkitError, ImportError):
        return float("nan")

    def prep(x: Tensor) -> Tensor:
        return F.interpolate(to_rgb(x.float()), size=(64, 64), mode="bilinear", align_corners=False)

    with torch.no_grad():
        return float(net(prep(a), prep(b), normalize=True).mean())


class InvertingGradients(Attack):
    """Geiping et al.'s gradient inversion of a participant's single-step update (see the module docstring)."""

    name = "inverting-gradients"
    paper = "https://arxiv.org/abs/2003.14053"
    summary = ("The server's attack on a client's FedSGD update: images whose gradient matches the update (cosine "
               "cost, TV prior, signed Adam), labels inferred from the last layer's gradient.")
    threat_model = "the server: a participant's update (federated, FedSGD)"
    requires = frozenset({Capability.UPDATE})
    needs_prior = False
    Config = InversionConfig

    def run(self, target: TargetModel, labels: Tensor, *, prior: Any, seed: int,
            generator: torch.Generator) -> AttackResult:
        release = target.update()  # the attack's one query: what the server holds, never the batch
        if release.local_steps != 1:
            raise UsageError(f"attack '{self.name}' inverts a single local step; this update took "
                             f"{release.local_steps}")
        grads = update_gradient(release.sent, release.upload, release.lr)
        public = getattr(self.context, "public_images", None)
        if release.batch_size > 1 and public is None:
            raise UsageError(f"attack '{self.name}': a batch's labels are inferred with the public images "
                             "(AttackContext.public_images); none were given")
        inferred = infer_labels(release.sent, grads, release.batch_size, public)
        images, cost = invert_update(release.sent, grads, inferred, tuple(target.input_shape), self.config,
                                     seed=seed, train_mode=release.train_mode)
        return AttackResult(self.name, images, inferred, torch.full((len(images),), -cost), 0, 0.0, seed, {},
                            extras={"batch_size": release.batch_size, "final_cost": cost})


class DLG(InvertingGradients):
    """DLG (Zhu et al., NeurIPS 2019): ``inverting-gradients`` with ``method = 'dlg'`` (Euclidean gradient
    distance, L-BFGS, no prior, no box) and the inferred labels."""

    name = "dlg"
    paper = "https://arxiv.org/abs/1906.08935"
    summary = ("Deep Leakage from Gradients: images whose gradient matches a client's FedSGD update in Euclidean "
               "distance, by L-BFGS, labels inferred from the update (iDLG).")

    class Config(InversionConfig):
        method: Literal["inverting-gradients", "dlg"] = Field("dlg", description="DLG (or Geiping et al.).")
        iterations: int = Field(300, ge=1, description="L-BFGS steps (the official notebook: 300).")


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(InvertingGradients)
    register(DLG)


__all__ = ["DLG", "InversionConfig", "InvertingGradients", "update_gradient", "infer_labels", "invert_update",
           "match", "scores", "total_variation"]
