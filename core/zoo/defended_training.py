"""What training-time defenses share: the cached-network plumbing of :class:`DefenseTraining`, the recipe's
hyper-parameters, and a few helpers (the undefended teacher, parameterised layers, activations).

Every training-time defense in ``plugins/defenses`` trains through :func:`~invertkit.core.zoo.train.fit`
(re-exported here), the one training loop the targets' own training uses too, so the loop (seeding,
shuffling, augmentation, optimiser, cosine schedule, train/eval modes) is written once; a defense states only
its loss (and, where it needs one, its own batches or optimiser — DP-SGD brings Opacus' Poisson batches and
its private optimiser).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from invertkit.core.errors import UsageError
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import DefenseContext, TrainingDefense
from invertkit.core.interfaces.target import TargetModel, retarget
from invertkit.core.zoo.train import LossFn, accuracy, cross_entropy, fit, minibatches

__all__ = [
    "DefenseTraining",
    "LossFn",
    "activation_modules",
    "cross_entropy",
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

    def fit_private(self, ctx: DefenseContext, net: nn.Module, loss: LossFn, hp: dict[str, Any],
                    **options: Any) -> nn.Module:
        """Train ``net`` minimising ``loss`` on the private split with the recipe's ``hp`` (see :meth:`start`)
        under the training seed; ``options`` go to :func:`fit`. Returns ``net`` (in eval mode)."""
        fit(net, loss, ctx.data.private_train, seed=self.training_seed(ctx), **hp, **options)
        return net

    @staticmethod
    def training_seed(ctx: DefenseContext) -> int:
        recipe_seed = int(getattr(ctx.recipe, "seed", 0) or 0)
        return recipe_seed + int(ctx.seed)

    @staticmethod
    def test_accuracy(net: nn.Module, ctx: DefenseContext) -> float:
        return accuracy(net, *ctx.data.private_test)
