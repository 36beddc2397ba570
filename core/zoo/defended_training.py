"""What training-time defenses share: one training loop that takes a loss, the cached-network plumbing of
:class:`DefenseTraining`, and a few helpers (the undefended teacher, parameterised layers, activations).

Every training-time defense in ``plugins/defenses`` trains through :func:`fit`, so the loop (seeding,
shuffling, augmentation, optimiser, cosine schedule, train/eval modes) is written once; a defense states only
its loss (and, where it needs one, its own batches or optimiser — DP-SGD brings Opacus' Poisson batches and
its private optimiser).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import UsageError
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import DefenseContext, TrainingDefense
from invertkit.core.interfaces.target import TargetModel, retarget
from invertkit.core.zoo.train import accuracy, augment, seed_everything

#: a loss: ``(model, x, y, epoch) -> scalar``; ``epoch`` counts from 0
LossFn = Callable[[nn.Module, Tensor, Tensor, int], Tensor]

__all__ = [
    "DefenseTraining",
    "LossFn",
    "activation_modules",
    "fit",
    "minibatches",
    "parameterised_layers",
    "pick",
    "recipe_hparams",
    "teacher_network",
]

#: activation module types whose outputs count as "hidden representations" (BiDO)
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Mish, nn.Hardswish, nn.PReLU,
)


def minibatches(data: tuple[Tensor, Tensor], batch_size: int, generator: torch.Generator,
                max_shift: int = 0, drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of shuffled mini-batches, each randomly shifted by up to ``max_shift`` pixels (images only:
    ``max_shift`` must be 0 for other inputs). ``drop_last`` drops a final batch smaller than ``batch_size``."""
    x, y = data
    perm = torch.randperm(len(x), generator=generator)
    for i in range(0, len(x), batch_size):
        idx = perm[i : i + batch_size]
        if drop_last and len(idx) < batch_size and i > 0:
            break
        xb = augment(x[idx], generator, max_shift) if max_shift > 0 else x[idx]
        yield xb, y[idx]


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    data: tuple[Tensor, Tensor] | None = None,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    max_shift: int = 0,
    seed: int = 0,
    params: Iterable[nn.Parameter] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    batches: Callable[[int, torch.Generator], Iterable[tuple[Tensor, Tensor]]] | None = None,
    schedule: bool = True,
    drop_last: bool = False,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> float:
    """Train ``model`` for ``epochs`` minimising ``loss_fn``; returns the seconds it took. Deterministic on a
    CPU for a ``seed``.

    By default: Adam (``lr``, ``weight_decay``) on ``params`` (default every parameter) with a cosine
    schedule over all steps, over shuffled mini-batches of ``data`` with random shifts. ``optimizer`` and
    ``batches`` (``(epoch, generator) -> (x, y)`` pairs) replace those; ``on_epoch(epoch, model)`` runs after
    ``model.train()`` at the start of every epoch (to freeze BatchNorm statistics, change a schedule, ...).
    The model is left in eval mode.
    """
    if data is None and batches is None:
        raise UsageError("fit() needs data or a batch iterator")
    g = seed_everything(seed)
    if optimizer is None:
        chosen = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
        optimizer = torch.optim.Adam(chosen, lr=lr, weight_decay=weight_decay)
    sched = None
    if schedule and batches is None and data is not None:
        per_epoch = len(data[0]) // batch_size if drop_last else math.ceil(len(data[0]) / batch_size)
        steps = max(1, epochs * max(1, per_epoch))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        if on_epoch is not None:
            on_epoch(epoch, model)
        stream = batches(epoch, g) if batches is not None else minibatches(data, batch_size, g, max_shift, drop_last)  # type: ignore[arg-type]
        for xb, yb in stream:
            loss = loss_fn(model, xb, yb, epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if sched is not None:
                sched.step()
    model.eval()
    return time.perf_counter() - t0


def pick(value: Any, default: Any) -> Any:
    """``value`` unless it is ``None`` (a config field left to the target's recipe)."""
    return default if value is None else value


def recipe_hparams(config: Any, ctx: DefenseContext) -> dict[str, Any]:
    """``epochs``, ``lr``, ``batch_size``, ``weight_decay`` and ``max_shift`` for :func:`fit`: the config's
    field where it has one that is not ``None``, else the target's training recipe."""
    recipe = ctx.recipe
    out: dict[str, Any] = {}
    for name, fallback in (("epochs", 30), ("lr", 1e-3), ("batch_size", 64), ("weight_decay", 0.0), ("max_shift", 0)):
        out[name] = pick(getattr(config, name, None), getattr(recipe, name, fallback))
    return out


def teacher_network(ctx: DefenseContext, who: str) -> nn.Module:
    """The undefended trained target network of the scenario (``ctx.extras["target_net"]``)."""
    net = ctx.extras.get("target_net") if ctx.extras else None
    if net is None:
        raise UsageError(f"defense '{who}' needs the undefended target network (ctx.extras['target_net']); "
                         "run it through the bench or invertkit.core.zoo.scenario.defense_context")
    return net


def parameterised_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules that own parameters (convolutions, norms, linear layers), in registration order — the
    network's "layers" as transfer learning counts them."""
    return [(n, m) for n, m in module.named_modules()
            if not list(m.children()) and any(True for _ in m.parameters(recurse=False))]


def activation_modules(module: nn.Module) -> list[nn.Module]:
    """The activation modules of ``module`` (their outputs are its hidden representations)."""
    return [m for m in module.modules() if isinstance(m, ACTIVATIONS)]


class RecipeOverrides(ComponentConfig):
    """The training hyper-parameters a training-time defense may set; ``None`` keeps the target recipe's."""

    epochs: int | None = Field(None, ge=1, description="Training epochs; None: the target recipe's.")
    lr: float | None = Field(None, gt=0.0, description="Adam learning rate; None: the target recipe's.")
    batch_size: int | None = Field(None, ge=1, description="Mini-batch size; None: the target recipe's.")


class DefenseTraining(TrainingDefense):
    """A :class:`TrainingDefense` whose network is trained once per content key and cached.

    Subclasses implement :meth:`train` and, when the defended network is not the target's architecture,
    :meth:`build` (an empty network to load the cached weights into). The cache key covers the defense,
    its config, the context seed and ``version`` (bump it when the training code changes), plus what
    :func:`~invertkit.core.zoo.scenario.defense_context` adds (recipe, data, target).
    """

    #: bump when the training procedure changes, so cached networks are retrained
    version: ClassVar[int] = 1

    def build(self, ctx: DefenseContext) -> nn.Module:
        """An empty network of the defended architecture (default: the target's)."""
        assert ctx.new_model is not None
        return ctx.new_model()

    def cache_key(self, ctx: DefenseContext) -> dict[str, Any]:
        return {"defense": self.name, "config": self.config.model_dump(mode="json"), "seed": ctx.seed,
                "impl": self.version}

    def network(self, ctx: DefenseContext | None) -> nn.Module:
        """The defended network: from the cache, or trained (and cached) now."""
        if ctx is None or ctx.cached is None or ctx.new_model is None or ctx.data is None:
            raise UsageError(f"training-time defense '{self.name}' needs the scenario (data, recipe); "
                             "run it through the bench or invertkit.core.zoo.scenario.defense_context")
        return ctx.cached(self.cache_key(ctx), lambda: self.train(ctx), lambda: self.build(ctx))

    def apply(self, target: TargetModel, ctx: DefenseContext | None = None) -> TargetModel:
        net = self.network(ctx)
        self.after_load(net, ctx)  # type: ignore[arg-type]
        return retarget(target, net)

    def after_load(self, net: nn.Module, ctx: DefenseContext) -> None:
        """Hook run on the (trained or loaded) network before it is wrapped; default: nothing."""

    # --------------------------------------------------------------- helpers for subclasses
    def start(self, ctx: DefenseContext) -> tuple[dict[str, Any], nn.Module]:
        """What every training starts with: the recipe's hyper-parameters (the config's ``epochs``, ``lr``,
        ``batch_size`` ... where set, see :func:`recipe_hparams`) and an empty network of the defended
        architecture, built under the training seed."""
        hp = recipe_hparams(self.config, ctx)
        torch.manual_seed(self.training_seed(ctx))
        return hp, self.build(ctx)

    @staticmethod
    def training_seed(ctx: DefenseContext) -> int:
        recipe_seed = int(getattr(ctx.recipe, "seed", 0) or 0)
        return recipe_seed + int(ctx.seed)

    @staticmethod
    def test_accuracy(net: nn.Module, ctx: DefenseContext) -> float:
        return accuracy(net, *ctx.data.private_test)
