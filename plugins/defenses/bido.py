"""``bido``: Bilateral Dependency Optimization, Peng et al., "Bilateral Dependency Optimization: Defending
Against Model-inversion Attacks" (KDD 2022, https://arxiv.org/abs/2206.05483).

BiDO trains the target with, for every hidden representation ``Z_j``,

    CE(f(x), y)  +  sum_j [ lambda_x * d(X, Z_j)  -  lambda_y * d(Z_j, Y) ]

minimising the dependency between the inputs and the latent representations (less redundant input
information for an inverter to exploit) while keeping the latents dependent on the labels (utility). The
dependency measure ``d`` is the HSIC variant of the paper (BiDO-HSIC), computed as in the authors' code
(after Ma et al.'s HSIC bottleneck): Gaussian kernels ``k(a, b) = exp(-|a - b|^2 / (2 sigma^2 D))`` on the
flattened inputs, latents and one-hot labels (``D`` their dimension, ``sigma = 5``), centred, in the
normalised form

    nHSIC(A, B) = sum( (K_A (K_A + eps m I)^-1) * (K_B (K_B + eps m I)^-1)^T ),    K = kernel matrix @ H

over a mini-batch of ``m`` (``eps = 1e-5``). The hidden representations are the outputs of every activation
module of the network (for the small CNN: its three conv blocks and the penultimate layer).

Defaults ``lambda_x = 0.05``, ``lambda_y = 0.5`` are the paper's BiDO-HSIC setting for CelebA (its MNIST
models use the COCO variant with (1, 50)); ``lambda_x`` is the strength knob.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import DefenseContext
from invertkit.core.zoo.defended_training import DefenseTraining, activation_modules, fit, recipe_hparams

#: the ridge of the normalised HSIC's inverses, times the batch size (authors' code)
EPS = 1e-5


def gaussian_kernel(v: Tensor, sigma: float) -> Tensor:
    """``exp(-|a - b|^2 / (2 sigma^2 D))`` over the rows of ``v`` ``(m, D)``."""
    v = v.reshape(len(v), -1)
    sq = (v * v).sum(1, keepdim=True)
    d = (sq + sq.T - 2 * v @ v.T).clamp_min(0.0)
    return torch.exp(-d / (2.0 * sigma * sigma * v.shape[1]))


def normalized_hsic(a: Tensor, b: Tensor, sigma: float) -> Tensor:
    """The normalised HSIC of the authors' code between the rows of ``a`` and ``b`` (Gaussian kernels)."""
    m = len(a)
    h = torch.eye(m, dtype=a.dtype, device=a.device) - 1.0 / m
    ka = gaussian_kernel(a, sigma) @ h
    kb = gaussian_kernel(b, sigma) @ h
    ridge = EPS * m * torch.eye(m, dtype=a.dtype, device=a.device)
    ra = ka @ torch.linalg.inv(ka + ridge)
    rb = kb @ torch.linalg.inv(kb + ridge)
    return (ra * rb.T).sum()


class _Hiddens:
    """Collects the outputs of the activation modules during a forward pass."""

    def __init__(self, model: nn.Module) -> None:
        self.outputs: list[Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in activation_modules(model)]
        if not self.handles:
            raise UsageError(f"bido: {type(model).__name__} has no activation modules to regularise")

    def _hook(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        self.outputs.append(output)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class BiDO(DefenseTraining):
    """Train the target with BiDO-HSIC: CE + sum_j (lambda_x * nHSIC(X, Z_j) - lambda_y * nHSIC(Z_j, Y))."""

    class Config(ComponentConfig):
        lambda_x: float = Field(
            0.05, ge=0.0,
            description="Weight of the input-latent dependency, minimised (the strength: larger is stronger). "
            "Paper (BiDO-HSIC, CelebA): 0.05.",
        )
        lambda_y: float = Field(
            0.5, ge=0.0, description="Weight of the latent-label dependency, maximised. Paper (CelebA): 0.5."
        )
        sigma: float = Field(5.0, gt=0.0, description="Gaussian kernel width (times sqrt(2 D)); authors' code: 5.")
        epochs: int | None = Field(None, ge=1, description="Training epochs; None: the target recipe's.")
        lr: float | None = Field(None, gt=0.0, description="Adam learning rate; None: the target recipe's.")
        batch_size: int | None = Field(None, ge=2, description="Mini-batch size; None: the target recipe's.")

    name: ClassVar[str] = "bido"
    summary: ClassVar[str] = (
        "BiDO-HSIC: CE + lambda_x * nHSIC(inputs, hiddens) - lambda_y * nHSIC(hiddens, labels) over every "
        "activation, Gaussian kernels."
    )
    paper: ClassVar[str] = "https://arxiv.org/abs/2206.05483"

    def train(self, ctx: DefenseContext) -> nn.Module:
        cfg = self.config
        hp = recipe_hparams(cfg, ctx)
        seed = self.training_seed(ctx)
        torch.manual_seed(seed)
        net = ctx.new_model()  # type: ignore[misc]
        k = int(ctx.data.num_classes)
        hiddens = _Hiddens(net)

        def loss(model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> Tensor:
            hiddens.outputs.clear()
            total = F.cross_entropy(model(x), y)
            if len(x) < 2:
                return total
            xs, ys = x.reshape(len(x), -1), F.one_hot(y, k).to(x.dtype)
            for z in hiddens.outputs:
                z = z.reshape(len(z), -1)
                total = total + cfg.lambda_x * normalized_hsic(xs, z, cfg.sigma) \
                    - cfg.lambda_y * normalized_hsic(z, ys, cfg.sigma)
            return total

        try:
            fit(net, loss, ctx.data.private_train, seed=seed, **hp)
        finally:
            hiddens.close()
        return net

    def report(self) -> dict[str, Any]:
        return {"lambda_x": float(self.config.lambda_x), "lambda_y": float(self.config.lambda_y)}


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(BiDO)
