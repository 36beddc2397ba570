"""``purifier``: prediction purification, Yang et al., "Defending Model Inversion and Membership Inference
Attacks via Prediction Purification" (2020, https://arxiv.org/abs/2005.03915).

A small autoencoder G on confidence vectors is trained on a reference set the defender holds but did not
train the target on — here the scenario's *public* split — to reproduce the target's confidences there:

    minimise  MSE(G(F(x)), F(x))  +  lam * CE(G(F(x)), argmax F(x))         (x in the public split)

and the API releases ``G(F(x))`` instead of ``F(x)``. Trained on non-private inputs, G maps every vector onto
the manifold of *typical* confidence vectors, reducing their dispersion: the fine detail a model-inversion
(or membership-inference) attacker reads from confidences is purified away.

Architecture as in the authors' code: the input is ``log p`` (floored) shifted so its minimum is
0; a fully-connected encoder K -> ceil(0.7K) -> ``latent`` and a mirrored decoder with BatchNorm + ReLU
(10 -> 7 -> 4 -> 7 -> 10 for K = 10 classes), softmax output. ``latent`` (default ceil(0.4K), the paper's 4
for 10 classes) is the strength: a narrower bottleneck purifies more.

Label: with ``label_swap`` off (default) the released label is always the undefended one: where G's arg-max
differs, the two entries are swapped back. ``label_swap`` on is the label swapper of the authors' follow-up
(Purifier, https://arxiv.org/abs/2212.00612): for a query that *is* one of the target's private training
images, a fixed random ``swap_rate`` fraction of the members (default: the target's train-test accuracy gap)
get their top-2 entries exchanged, so members' labels are no more accurate than non-members'.

The purifier is trained once per (target, data, config) and cached. Gradients are exact through G.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.capability import Capability
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import DefendedTarget, DefenseContext, OutputDefense
from invertkit.core.interfaces.target import TargetModel
from invertkit.core.zoo.defended_training import fit

C = Capability
#: confidences are floored at float32's smallest normal number before the log (the authors floor log p at
#: -1000; a floor that keeps the gradient finite at p = 0 changes nothing else), then shifted to min 0
FLOOR = float(torch.finfo(torch.float32).tiny)


class PurifierNet(nn.Module):
    """The confidence autoencoder: ``log p`` (floored, shifted) -> K -> h -> latent -> h -> K logits."""

    def __init__(self, num_classes: int, latent: int) -> None:
        super().__init__()
        k = int(num_classes)
        h = max(int(latent), math.ceil(0.7 * k))
        self.num_classes, self.latent = k, int(latent)
        self.net = nn.Sequential(
            nn.Linear(k, h), nn.BatchNorm1d(h), nn.ReLU(True),
            nn.Linear(h, latent), nn.BatchNorm1d(latent), nn.ReLU(True),
            nn.Linear(latent, h), nn.BatchNorm1d(h), nn.ReLU(True),
            nn.Linear(h, k),
        )

    def forward(self, probs: Tensor) -> Tensor:
        """Purified logits."""
        z = torch.log(probs.clamp_min(FLOOR))
        z = z - z.min(dim=1, keepdim=True).values
        return self.net(z)


def _row_keys(x: Tensor) -> list[bytes]:
    flat = x.detach().to("cpu", torch.float32).contiguous().reshape(len(x), -1).numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


class _SwappingTarget(DefendedTarget):
    """A purified target that also sees the query images (for the label swapper)."""

    def _released(self, x: Tensor) -> Tensor:
        return self.defense.swap_members(x, super()._released(x))  # type: ignore[attr-defined]


class Purifier(OutputDefense):
    """Release ``G(p)``: a confidence autoencoder trained on the public split's target confidences."""

    class Config(ComponentConfig):
        latent: int | None = Field(
            None,
            ge=1,
            description="Width of the autoencoder's bottleneck (the strength: smaller purifies more). None: "
            "ceil(0.4 * num_classes), the paper's 4 for 10 classes.",
        )
        lam: float = Field(
            1.0,
            ge=0.0,
            description="Weight of the label term CE(G(p), argmax p) next to the reconstruction MSE.",
        )
        epochs: int = Field(100, ge=1, description="Training epochs of the purifier on the public confidences.")
        lr: float = Field(1e-3, gt=0.0, description="Adam learning rate of the purifier.")
        batch_size: int = Field(128, ge=2, description="Purifier mini-batch size.")
        label_swap: bool = Field(
            False,
            description="Off: the released label is always the undefended one. On: the follow-up paper's label "
            "swapper for queries that are private training images (a fixed random fraction gets top-2 swapped).",
        )
        swap_rate: float | None = Field(
            None,
            ge=0.0,
            le=1.0,
            description="Fraction of private training images whose label is swapped when label_swap is on; None: "
            "the target's train accuracy minus its test accuracy (clipped at 0).",
        )

    name: ClassVar[str] = "purifier"
    threat_model: ClassVar[str] = "output perturbation (learned)"
    summary: ClassVar[str] = (
        "Yang et al.'s prediction purification: a confidence autoencoder trained on public-split outputs "
        "reforms every released vector; label kept unless label_swap; exact gradients."
    )
    paper: ClassVar[str] = "https://arxiv.org/abs/2005.03915"
    straight_through: ClassVar[bool] = False
    gradient: ClassVar[str] = "exact"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.net: PurifierNet | None = None
        self._swapped: set[bytes] = set()
        self._facts: dict[str, Any] = {}

    # ------------------------------------------------------------------ training
    def latent_for(self, num_classes: int) -> int:
        return int(self.config.latent) if self.config.latent is not None else max(1, math.ceil(0.4 * num_classes))

    def _reference_confidences(self, target: TargetModel, ctx: DefenseContext) -> Tensor:
        """The undefended target's confidences on the public split: from the trained network when the context
        has it, else through the target itself (those queries are the defender's, not the attacker's)."""
        x = ctx.data.public[0]
        net = ctx.extras.get("target_net") if ctx.extras else None
        out = []
        with torch.no_grad():
            if net is not None:
                net.eval()
                for i in range(0, len(x), 512):
                    out.append(torch.softmax(net(x[i : i + 512].to(target.device)), dim=1).cpu())
            else:
                probe = DefendedTarget(target, self)  # only for its full-vector read-out of the wrapped target
                before, budget = target.queries, target.budget
                target.budget = None
                try:
                    for i in range(0, len(x), 512):
                        out.append(probe._undefended(x[i : i + 512].to(target.device)).detach().cpu())
                finally:
                    target.queries, target.budget = before, budget
        return torch.cat(out).float()

    def _train(self, probs: Tensor, num_classes: int, seed: int) -> PurifierNet:
        cfg = self.config
        torch.manual_seed(seed)
        net = PurifierNet(num_classes, self.latent_for(num_classes))
        labels = probs.argmax(dim=1)

        def loss(model: nn.Module, p: Tensor, y: Tensor, epoch: int) -> Tensor:
            logits = model(p)
            return F.mse_loss(torch.softmax(logits, dim=1), p) + cfg.lam * F.cross_entropy(logits, y)

        batch = min(int(cfg.batch_size), max(2, len(probs)))
        fit(net, loss, (probs, labels), epochs=int(cfg.epochs), lr=float(cfg.lr), batch_size=batch, seed=seed,
            drop_last=True)  # BatchNorm needs two rows
        return net.eval()

    def apply(self, target: TargetModel, ctx: DefenseContext | None = None) -> TargetModel:
        kind = _SwappingTarget if self.config.label_swap else DefendedTarget
        defended = kind(target, self, seed=ctx.seed if ctx is not None else 0)
        if C.PROBS not in target.capabilities and C.TOPK not in target.capabilities:
            return defended  # nothing is released that the purifier would transform
        if ctx is None or ctx.data is None:
            raise UsageError("defense 'purifier' trains on the scenario's public split; give it a DefenseContext "
                             "with data (run it through the bench or core.zoo.scenario.defense_context)")
        k = target.num_classes
        seed = int(ctx.seed)
        probs = self._reference_confidences(target, ctx)
        if ctx.cached is not None:
            key = {"defense": self.name, "config": self.config.model_dump(mode="json"), "seed": seed,
                   "impl": 1, "reference": hashlib.sha256(probs.numpy().tobytes()).hexdigest()[:20]}
            self.net = ctx.cached(key, lambda: self._train(probs, k, seed),
                                  lambda: PurifierNet(k, self.latent_for(k))).eval()
        else:
            self.net = self._train(probs, k, seed)
        for p in self.net.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            purified = torch.softmax(self.net(probs), dim=1)
        self._facts = {
            "latent": self.latent_for(k),
            "reference_label_agreement": round(float((purified.argmax(1) == probs.argmax(1)).float().mean()), 4),
            "reference_l1_distortion": round(float((purified - probs).abs().sum(1).mean()), 4),
        }
        self._swapped = self._members_to_swap(ctx) if self.config.label_swap else set()
        self.net.to(target.device)
        return defended

    def _members_to_swap(self, ctx: DefenseContext) -> set[bytes]:
        x, y = ctx.data.private_train
        rate = self.config.swap_rate
        if rate is None:
            net = ctx.extras.get("target_net") if ctx.extras else None
            if net is None:
                raise UsageError("purifier label_swap without swap_rate needs the target network to measure its "
                                 "train-test accuracy gap (ctx.extras['target_net'])")
            from invertkit.core.zoo.train import accuracy

            rate = max(0.0, accuracy(net, x, y) - accuracy(net, *ctx.data.private_test))
        g = torch.Generator().manual_seed(int(ctx.seed) + 104729)
        chosen = torch.randperm(len(x), generator=g)[: int(round(float(rate) * len(x)))]
        self._facts["swap_rate"] = round(float(rate), 4)
        return set(_row_keys(x[chosen])) if len(chosen) else set()

    def report(self) -> dict[str, Any]:
        return dict(self._facts)

    # ------------------------------------------------------------------ release
    def transform(self, probs: Tensor, generator: torch.Generator) -> Tensor:
        if self.net is None:
            raise UsageError("defense 'purifier' was not applied (it trains on the scenario when applied)")
        q = torch.softmax(self.net(probs.float()), dim=1).to(probs.dtype)
        top = probs.detach().argmax(dim=1, keepdim=True)
        now = q.detach().argmax(dim=1, keepdim=True)
        q_top, q_now = q.gather(1, top), q.gather(1, now)
        return q.scatter(1, now, q_top).scatter(1, top, q_now)  # the label is the undefended one

    def swap_members(self, x: Tensor, q: Tensor) -> Tensor:
        """The label swapper: exchange the top-2 released entries of the chosen private training images."""
        if not self._swapped:
            return q
        rows = [i for i, k in enumerate(_row_keys(x)) if k in self._swapped]
        if not rows:
            return q
        idx = torch.tensor(rows, device=q.device)
        top2 = torch.topk(q.detach()[idx], 2, dim=1).indices
        sub = q[idx]
        a, b = sub.gather(1, top2[:, :1]), sub.gather(1, top2[:, 1:])
        sub = sub.scatter(1, top2[:, :1], b).scatter(1, top2[:, 1:], a)
        return q.index_copy(0, idx, sub)


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(Purifier)
