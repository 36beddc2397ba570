"""``netguard``: misleading the inversion with GAN-generated fake samples, after Gong et al., "NetGuard:
Protecting Commercial Web APIs from Model Inversion Attacks using GAN-generated Fake Samples" (WWW 2023,
https://doi.org/10.1145/3543507.3583224).

NetGuard inserts engineered *fake* training samples for the private identities: images a GAN produces that
do not look like the identity's real data but that the defended model is trained to classify as that
identity with high confidence. A model-inversion attack, which searches a generator's output space for
images the target assigns to the identity, then converges on the fakes instead of the private data; NetGuard
keeps the model's utility with continual learning (the real data is replayed while the fakes are learned).

This implementation (the paper's own GAN and continual-learning details are not reproduced):

1. **Fakes** come from the scenario's public prior (``ctx.extras["scenario"].prior``) — the kind of
   generator an attacker searches, so they lie where the attack looks. The decoy generator: ``pool`` latents
   per decoy of identity ``y`` are moved for ``search_steps`` Adam steps towards ``y`` under the undefended
   model (minimising CE(model(G(z)), y)); of the results the model assigns to ``y``, the ``fake_ratio * n_y``
   farthest (pixel L2 to the nearest real training image of ``y``) from the real data are kept — samples
   the model calls ``y`` that do not look like ``y``'s private images.
2. **Continual learning**: the deployed (undefended) target is fine-tuned on the union of the replayed private
   training set and the fakes labelled as their identities, so it keeps its accuracy on real data while
   learning the decoys.

``fake_ratio`` is the strength: more decoys per identity pull the inversion away more often.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import DefenseContext
from invertkit.core.zoo.defended_training import DefenseTraining, cross_entropy, fit, pick, recipe_hparams, teacher_network


def select_fakes(pool: Tensor, predicted: Tensor, x: Tensor, y: Tensor,
                 per_class: dict[int, int]) -> tuple[Tensor, Tensor]:
    """For each class ``c``: among the pool images the undefended model already assigns to ``c``
    (``predicted == c``), the ones farthest (pixel L2 to the nearest real image of ``c``) from its real data;
    when too few are assigned to ``c``, the farthest of the rest make up the number. Each pool image is used
    at most once."""
    flat_pool = pool.reshape(len(pool), -1)
    taken = torch.zeros(len(pool), dtype=torch.bool)
    images, labels = [], []
    for c, n in sorted(per_class.items()):
        real = x[y == c].reshape(int((y == c).sum()), -1)
        if n <= 0 or len(real) == 0:
            continue
        nearest = torch.cdist(flat_pool, real).min(dim=1).values
        # candidates the model already puts in c rank first (+ a margin larger than any distance)
        rank = nearest + (predicted == c).to(nearest.dtype) * (float(nearest.max()) + 1.0)
        rank = rank.masked_fill(taken, float("-inf"))
        idx = torch.topk(rank, min(n, int((~taken).sum())), largest=True).indices
        taken[idx] = True
        images.append(pool[idx])
        labels.append(torch.full((len(idx),), c, dtype=torch.long))
    if not images:
        return pool[:0], torch.zeros(0, dtype=torch.long)
    return torch.cat(images), torch.cat(labels)


class NetGuard(DefenseTraining):
    """Fine-tune the target on its private data plus prior-generated decoys labelled as the private identities."""

    class Config(ComponentConfig):
        fake_ratio: float = Field(
            0.5,
            gt=0.0,
            description="Fake samples per identity, as a fraction of its real training images (the strength).",
        )
        pool: int = Field(2, ge=1, description="Candidate decoys generated per decoy kept (the farthest are kept).")
        search_steps: int = Field(
            30, ge=0, description="Adam steps of the decoy search (prior latents towards the identity)."
        )
        search_lr: float = Field(0.05, gt=0.0, description="Step size of the decoy search in the prior's latent space.")
        epochs: int | None = Field(None, ge=1, description="Fine-tuning epochs; None: half the target recipe's.")
        lr: float | None = Field(None, gt=0.0, description="Adam learning rate; None: the recipe's / 2.")
        batch_size: int | None = Field(None, ge=1, description="Mini-batch size; None: the target recipe's.")

    name: ClassVar[str] = "netguard"
    threat_model: ClassVar[str] = "training-time"
    summary: ClassVar[str] = (
        "NetGuard-style decoys: prior samples far from each identity's data, labelled as it, learned by "
        "fine-tuning with replay of the private set."
    )
    paper: ClassVar[str] = "https://doi.org/10.1145/3543507.3583224"
    version: ClassVar[int] = 3

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._facts: dict[str, Any] = {}

    def fakes(self, ctx: DefenseContext) -> tuple[Tensor, Tensor]:
        """The decoys and their labels (deterministic for a context)."""
        scenario = ctx.extras.get("scenario") if ctx.extras else None
        prior = getattr(scenario, "prior", None)
        if prior is None:
            raise UsageError("defense 'netguard' generates its decoys with the scenario's prior "
                             "(ctx.extras['scenario'].prior); run it through the bench")
        cfg = self.config
        x, y = ctx.data.private_train
        counts = {int(c): int((y == c).sum()) for c in torch.unique(y)}
        per_class = {c: max(1, int(round(float(cfg.fake_ratio) * n))) for c, n in counts.items()}
        labels = torch.cat([torch.full((n * int(cfg.pool),), c, dtype=torch.long) for c, n in sorted(per_class.items())])
        teacher = teacher_network(ctx, self.name).eval()
        g = torch.Generator().manual_seed(self.training_seed(ctx) + 31337)
        z = prior.sample_latent(len(labels), g).detach().clone().requires_grad_(True)
        target = labels.to(z.device)
        opt = torch.optim.Adam([z], lr=float(cfg.search_lr))
        for _ in range(int(cfg.search_steps)):  # the decoy generator: prior samples the model assigns to y
            loss = F.cross_entropy(teacher(prior.decode(z)), target, reduction="sum")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                z.copy_(prior.project(z))
        with torch.no_grad():
            pool = torch.cat([prior.decode(z[i : i + 512]).cpu() for i in range(0, len(z), 512)]).clamp(0, 1)
            predicted = torch.cat([teacher(pool[i : i + 512]).argmax(1) for i in range(0, len(pool), 512)])
        fx, fy = [], []
        for c, n in sorted(per_class.items()):
            mine = labels == c
            sx, sy = select_fakes(pool[mine], predicted[mine], x, y, {c: n})
            fx.append(sx)
            fy.append(sy)
        return torch.cat(fx), torch.cat(fy)

    def train(self, ctx: DefenseContext) -> nn.Module:
        hp = recipe_hparams(self.config, ctx)
        hp["epochs"] = int(pick(self.config.epochs, max(1, int(hp["epochs"]) // 2)))
        if self.config.lr is None:
            hp["lr"] = float(hp["lr"]) / 2.0
        fx, fy = self.fakes(ctx)
        x, y = ctx.data.private_train
        net = copy.deepcopy(teacher_network(ctx, self.name))
        for p in net.parameters():
            p.requires_grad_(True)
        fit(net, cross_entropy, (torch.cat([x, fx]), torch.cat([y, fy])), seed=self.training_seed(ctx), **hp)
        with torch.no_grad():
            fake_acc = float((net(fx).argmax(1) == fy).float().mean()) if len(fx) else float("nan")
        self._facts = {"fakes": len(fx), "fake_train_acc": round(fake_acc, 4)}  # known when trained here
        return net

    def report(self) -> dict[str, Any]:
        return {**self._facts, "fake_ratio": float(self.config.fake_ratio)}


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(NetGuard)
