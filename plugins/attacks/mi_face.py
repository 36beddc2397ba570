"""MI-Face (Fredrikson, Jha & Ristenpart, CCS 2015), https://doi.org/10.1145/2810103.2813677.

White-box, pixel space, no generative prior. Algorithm 1 of the paper: starting from x0 = 0, repeat
``x <- Process(x - lambda * grad c(x))`` with ``c(x) = 1 - p_y(x) + AuxTerm(x)``, stop after alpha steps,
when the cost stops improving for beta steps, or when it drops to gamma; return the lowest-cost image.
Paper values: alpha = 5000, beta = 100, lambda = 0.1. The paper states gamma = 0.99 as the confidence to
reach, i.e. the run stops once ``1 - p_y <= 1 - 0.99``; that is how ``gamma`` is read here. AuxTerm is a
total-variation prior (``tv_weight``) and Process clamps to the valid pixel range, optionally followed by a
denoising 3x3 blur every ``denoise_every`` steps (the paper's denoising step for its deeper models).

Many classes. The gradient of ``1 - p_y`` is ``p_y`` times that of ``log p_y``: on a 1,000-class model a start
image has ``p_y`` near 0.001, so the paper's step moves it about a thousandth as far as on its 40-class faces and
the attack stalls. ``objective = "log-probability"`` (a deliberate, opt-in difference from the paper) descends
``-log p_y + AuxTerm`` instead, whose gradient does not shrink with ``p_y``; the stopping rule is the same
(``p_y >= gamma``, i.e. a cost of ``-log gamma``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.optim import optimise


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV per sample (mean absolute neighbour difference)."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).mean(1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


def blur3(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 2.0, 1.0], device=x.device, dtype=x.dtype)
    k = (k[:, None] * k[None, :]) / 16.0
    c = x.shape[1]
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(c, 1, 3, 3), groups=c)


class MIFace(Attack):
    name = "mi-face"
    paper = "https://doi.org/10.1145/2810103.2813677"
    summary = "Pixel-space gradient descent on 1 - p_y + TV, with the paper's stopping rules."
    requires = frozenset({C.GRAD, C.PROBS})
    needs_prior = False

    class Config(AttackConfig):
        iterations: int = Field(5000, ge=1, description="alpha: maximum steps (paper: 5000)")
        patience: int = Field(100, ge=1, description="beta: stop when the cost has not improved for this many steps")
        confidence: float = Field(0.99, gt=0, le=1, description="gamma: stop once p_y reaches it (paper: 0.99)")
        lr: float = Field(0.1, gt=0, description="lambda: gradient step (paper: 0.1)")
        tv_weight: float = Field(0.05, ge=0, description="weight of the total-variation AuxTerm")
        denoise_every: int = Field(0, ge=0, description="apply a 3x3 denoising blur every N steps (0: never)")
        init: str = Field("zeros", pattern="^(zeros|uniform)$", description="x0: zeros (paper) or uniform noise")
        objective: Literal["probability", "log-probability"] = Field(
            "probability", description="'probability': c = 1 - p_y (the paper); 'log-probability': c = -log p_y, "
                                       "whose gradient does not vanish when p_y is tiny (models with many classes)")

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        cfg = self.config
        shape = (len(labels), *target.input_shape)
        x0 = torch.zeros(shape) if cfg.init == "zeros" else torch.rand(shape, generator=generator)
        x0 = x0.to(target.device)
        y = labels.to(target.device)
        step = {"n": 0}

        log_objective = cfg.objective == "log-probability"

        def cost(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            if log_objective:
                ident = -target.log_probs(x).gather(1, y[idx, None]).squeeze(1)
            else:
                ident = 1.0 - target.probs(x).gather(1, y[idx, None]).squeeze(1)
            return ident + cfg.tv_weight * total_variation(x)

        def process(x: torch.Tensor) -> torch.Tensor:
            step["n"] += 1
            if cfg.denoise_every and step["n"] % cfg.denoise_every == 0:
                x = blur3(x)
            return x.clamp(0.0, 1.0)

        out = optimise(
            x0,
            iterations=cfg.iterations,
            lr=cfg.lr,
            optimizer="sgd",
            momentum=0.0,
            objective=cost,
            project=process,
            keep_best=True,
            patience=cfg.patience,
            stop_below=-math.log(cfg.confidence) if log_objective else 1.0 - cfg.confidence,
        )
        return AttackResult(self.name, out.params, labels, -out.loss.cpu(), 0, 0.0, seed, {},
                            extras={"iterations_run": out.iterations.float().mean().item()})


@hookimpl
def invertkit_register_attacks(register) -> None:
    register(MIFace)
