"""``pruning``: global magnitude pruning of the trained target, optionally with a short fine-tune.

Magnitude pruning (Han et al., "Learning both Weights and Connections for Efficient Neural Networks", NIPS 2015,
https://arxiv.org/abs/1506.02626), studied as a privacy defense e.g. by Wang et al., "Against Membership
Inference Attack: Pruning is All You Need" (IJCAI 2021, https://arxiv.org/abs/2008.13578): the ``sparsity``
fraction of smallest-magnitude weights over *all* convolution and linear weight tensors together
(``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``) is set to zero. ``finetune_epochs``
then retrains the surviving weights on the private split with the masks in place (pruned weights stay
zero), and the masks are made permanent. ``sparsity`` is the strength; the defended network has exactly that
fraction of zero weights in those tensors (:meth:`Pruning.report` measures it).
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from pydantic import Field
from torch import nn
from torch.nn.utils import prune

from invertkit.core.errors import UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import DefenseContext
from invertkit.core.zoo.defended_training import DefenseTraining, cross_entropy, recipe_hparams, teacher_network

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_weights(net: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in net.modules() if isinstance(m, PRUNABLE)]


def sparsity_of(net: nn.Module) -> float:
    """Fraction of exactly-zero entries over the convolution and linear weights."""
    weights = [m.weight.detach() for m, _ in prunable_weights(net)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(1, total)


class Pruning(DefenseTraining):
    """Global L1 (magnitude) unstructured pruning of the target's conv/linear weights, then a short fine-tune."""

    class Config(ComponentConfig):
        sparsity: float = Field(
            0.5, ge=0.0, lt=1.0,
            description="Fraction of conv/linear weights set to zero, smallest magnitudes first, across all layers "
            "(the strength: larger is stronger).",
        )
        finetune_epochs: int = Field(
            2, ge=0, description="Epochs of fine-tuning on the private split with the pruning masks in place (0: none)."
        )
        lr: float | None = Field(None, gt=0.0, description="Fine-tuning Adam learning rate; None: the recipe's / 10.")
        batch_size: int | None = Field(None, ge=1, description="Mini-batch size; None: the target recipe's.")

    name: ClassVar[str] = "pruning"
    threat_model: ClassVar[str] = "training-time"
    summary: ClassVar[str] = (
        "Global magnitude pruning of the target's conv/linear weights to a sparsity, then a short masked fine-tune."
    )
    paper: ClassVar[str] = "https://arxiv.org/abs/2008.13578"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._facts: dict[str, Any] = {}

    def train(self, ctx: DefenseContext) -> nn.Module:
        net = copy.deepcopy(teacher_network(ctx, self.name))
        for p in net.parameters():
            p.requires_grad_(True)
        targets = prunable_weights(net)
        if not targets:
            raise UsageError(f"pruning: {type(net).__name__} has no convolution or linear weights")
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=float(self.config.sparsity))
        epochs = int(self.config.finetune_epochs)
        if epochs > 0:
            hp = recipe_hparams(self.config, ctx)
            if self.config.lr is None:
                hp["lr"] = float(hp["lr"]) / 10.0
            hp["epochs"] = epochs
            self.fit_private(ctx, net, cross_entropy, hp, schedule=False)
        for module, name in targets:
            prune.remove(module, name)
        return net.eval()

    def after_load(self, net: nn.Module, ctx: DefenseContext) -> None:
        self._facts = {"sparsity": round(sparsity_of(net), 6), "target_sparsity": float(self.config.sparsity)}

    def report(self) -> dict[str, Any]:
        return dict(self._facts)


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(Pruning)
