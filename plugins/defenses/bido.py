"""``bido``: Bilateral Dependency Optimization, Peng et al., "Bilateral Dependency Optimization: Defending
Against Model-inversion Attacks" (KDD 2022, https://arxiv.org/abs/2206.05483).

BiDO trains the target with, for every hidden representation ``Z_j``,

    CE(f(x), y)  +  sum_j [ lambda_x * d(X, Z_j)  -  lambda_y * d(Z_j, Y) ]

minimising the dependency between the inputs and the latent representations (less redundant input
information for an inverter to exploit) while keeping the latents dependent on the labels (utility). The
dependency measure ``d`` is the HSIC variant of the paper (BiDO-HSIC).

Follows the authors' code, AlanPeng0897/Defend_MI: ``BiDO/train_HSIC.py`` (its defaults: ``--measure HSIC``,
``--ktype linear``), ``BiDO/engine.py`` (``multilayer_hsic``: ``sigma = 5``, the one-hot labels, the
flattened inputs) and ``BiDO/hsic.py`` (``kernelmat``, ``hsic_normalized_cca``, ``hsic_objective``):

* kernels: Gaussian ``k(a, b) = exp(-|a - b|^2 / (2 sigma^2 D))`` (``D`` the flattened dimension,
  ``sigma = 5``) on the latents and on the inputs; on the one-hot labels the kernel is ``--ktype``, whose
  default is *linear*, ``K_Y = Y Y^T`` (1 for two samples of the same class, else 0) — ``label_kernel =
  "linear"`` here (``"gaussian"``: the Gaussian kernel with the same ``sigma``, ``--ktype gaussian``);
* the normalised HSIC, with the kernel matrices centred on the right only (``K = kernel @ H``, ``H = I -
  1/m``) as in ``kernelmat``:

      nHSIC(A, B) = sum( (K_A (K_A + eps m I)^-1) * (K_B (K_B + eps m I)^-1)^T ),   eps = 1e-5

  over a mini-batch of ``m``;
* the hidden representations (``layers = "blocks"``): the output of every block of the network and the
  penultimate features, as the authors' ``VGG16``/``MCNN`` ``forward`` with ``hsic_training`` return them
  (each block ends with its pooling layer when it has one). Here a block ends at an activation module, or at
  the pooling layers that directly follow it in the same ``nn.Sequential``; for the small CNN that is its
  three conv blocks (the second after its pooling) and the penultimate layer. ``layers = "activations"``
  takes the activation outputs themselves (before any pooling), this module's earlier choice.

Defaults ``lambda_x = 0.05``, ``lambda_y = 0.5`` are the paper's BiDO-HSIC setting for CelebA, the balancing
hyper-parameters of the README's GMI and KED-MI defense models (its MNIST models use the COCO variant with
(1, 50); ``train_HSIC.py`` itself ships ``hp_list = [(0, 0)]`` to be edited); ``lambda_x`` is the strength knob.

Deliberate differences from the authors' code: the optimiser, epochs and batch size are the target recipe's
(theirs: Adam, lr 1e-4 for VGG16 with a pre-trained feature extractor, MultiStepLR, keeping the best
test-accuracy epoch); squared distances below 0 from rounding are clamped to 0 (``distmat`` takes their
absolute value); the kernels are computed in the inputs' dtype and device (``kernelmat`` casts to CPU
float32); only the HSIC measure is implemented (not COCO).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.defense import DefenseContext
from invertkit.core.zoo.defended_training import DefenseTraining, RecipeOverrides, activation_modules

#: the ridge of the normalised HSIC's inverses, times the batch size (authors' code)
EPS = 1e-5


def gaussian_kernel(v: Tensor, sigma: float) -> Tensor:
    """``exp(-|a - b|^2 / (2 sigma^2 D))`` over the rows of ``v`` ``(m, D)``."""
    v = v.reshape(len(v), -1)
    sq = (v * v).sum(1, keepdim=True)
    d = (sq + sq.T - 2 * v @ v.T).clamp_min(0.0)
    return torch.exp(-d / (2.0 * sigma * sigma * v.shape[1]))


def linear_kernel(v: Tensor) -> Tensor:
    """``a . b`` over the rows of ``v`` ``(m, D)``: on one-hot labels, 1 for the same class and 0 otherwise."""
    v = v.reshape(len(v), -1)
    return v @ v.T


def kernel_matrix(v: Tensor, kind: str, sigma: float) -> Tensor:
    if kind == "gaussian":
        return gaussian_kernel(v, sigma)
    if kind == "linear":
        return linear_kernel(v)
    raise UsageError(f"bido: unknown kernel {kind!r} (linear, gaussian)")


def normalized_hsic(a: Tensor, b: Tensor, sigma: float, kernel_b: str = "gaussian") -> Tensor:
    """The normalised HSIC of the authors' ``hsic_normalized_cca`` between the rows of ``a`` (Gaussian
    kernel) and ``b`` (``kernel_b``: ``"gaussian"`` or ``"linear"``), kernels centred on the right."""
    m = len(a)
    h = torch.eye(m, dtype=a.dtype, device=a.device) - 1.0 / m
    ka = gaussian_kernel(a, sigma) @ h
    kb = kernel_matrix(b.to(a.dtype), kernel_b, sigma) @ h
    ridge = EPS * m * torch.eye(m, dtype=a.dtype, device=a.device)
    ra = ka @ torch.linalg.inv(ka + ridge)
    rb = kb @ torch.linalg.inv(kb + ridge)
    return (ra * rb.T).sum()


#: pooling layers that end a block when they directly follow its activation
POOLS: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)


def hidden_modules(model: nn.Module, layers: str = "blocks") -> list[nn.Module]:
    """The modules whose outputs are the hidden representations: ``"activations"``: every activation module;
    ``"blocks"``: every activation, or the last of the pooling layers that directly follow it in its
    ``nn.Sequential`` (the block's output, as the authors' networks return it)."""
    acts = activation_modules(model)
    if layers == "activations":
        return acts
    if layers != "blocks":
        raise UsageError(f"bido: unknown layers {layers!r} (blocks, activations)")
    end = {id(a): a for a in acts}
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.children())
        for i, child in enumerate(children):
            if id(child) not in end:
                continue
            j = i
            while j + 1 < len(children) and isinstance(children[j + 1], POOLS):
                j += 1
            end[id(child)] = children[j]
    return [end[id(a)] for a in acts]


class _Hiddens:
    """Collects the hidden representations (outputs of :func:`hidden_modules`) during a forward pass."""

    def __init__(self, model: nn.Module, layers: str = "blocks") -> None:
        self.outputs: list[Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in hidden_modules(model, layers)]
        if not self.handles:
            raise UsageError(f"bido: {type(model).__name__} has no activation modules to regularise")

    def _hook(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        self.outputs.append(output)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class BiDO(DefenseTraining):
    """Train the target with BiDO-HSIC: CE + sum_j (lambda_x * nHSIC(X, Z_j) - lambda_y * nHSIC(Z_j, Y))."""

    class Config(RecipeOverrides):
        lambda_x: float = Field(
            0.05, ge=0.0,
            description="Weight of the input-latent dependency, minimised (the strength: larger is stronger). "
            "Paper (BiDO-HSIC, CelebA): 0.05.",
        )
        lambda_y: float = Field(
            0.5, ge=0.0, description="Weight of the latent-label dependency, maximised. Paper (CelebA): 0.5."
        )
        sigma: float = Field(5.0, gt=0.0, description="Gaussian kernel width (times sqrt(2 D)); authors' code: 5.")
        label_kernel: Literal["linear", "gaussian"] = Field(
            "linear",
            description="Kernel on the one-hot labels in nHSIC(Z, Y): 'linear' (Y Y^T; the authors' train_HSIC.py "
            "default --ktype linear) or 'gaussian' (with sigma).",
        )
        layers: Literal["blocks", "activations"] = Field(
            "blocks",
            description="Hidden representations: 'blocks' (each block's output, after the pooling that follows "
            "its activation, and the penultimate features; the authors' networks) or 'activations' (every "
            "activation's output, before pooling).",
        )
        batch_size: int | None = Field(None, ge=2, description="Mini-batch size; None: the target recipe's.")

    name: ClassVar[str] = "bido"
    threat_model: ClassVar[str] = "training-time"
    summary: ClassVar[str] = (
        "BiDO-HSIC: CE + lambda_x * nHSIC(hiddens, inputs) - lambda_y * nHSIC(hiddens, labels) over every "
        "block's output; Gaussian kernels, linear on the one-hot labels (the authors' defaults)."
    )
    paper: ClassVar[str] = "https://arxiv.org/abs/2206.05483"

    def train(self, ctx: DefenseContext) -> nn.Module:
        cfg = self.config
        hp, net = self.start(ctx)
        k = int(ctx.data.num_classes)
        hiddens = _Hiddens(net, cfg.layers)

        def loss(model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> Tensor:
            hiddens.outputs.clear()
            total = F.cross_entropy(model(x), y)
            if len(x) < 2:
                return total
            xs, ys = x.reshape(len(x), -1), F.one_hot(y, k).to(x.dtype)
            for z in hiddens.outputs:
                z = z.reshape(len(z), -1)
                # the authors' hsic_objective: nHSIC(Z, X) with Gaussian kernels on both, nHSIC(Z, Y) with the
                # label kernel on Y
                total = total + cfg.lambda_x * normalized_hsic(z, xs, cfg.sigma) \
                    - cfg.lambda_y * normalized_hsic(z, ys, cfg.sigma, cfg.label_kernel)
            return total

        try:
            self.fit_private(ctx, net, loss, hp)
        finally:
            hiddens.close()
        return net

    def report(self) -> dict[str, Any]:
        return {"lambda_x": float(self.config.lambda_x), "lambda_y": float(self.config.lambda_y),
                "label_kernel": self.config.label_kernel, "layers": self.config.layers}


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(BiDO)
