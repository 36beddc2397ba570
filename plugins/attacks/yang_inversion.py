"""Training-based black-box inversion with background-knowledge alignment (Yang et al., CCS 2019).

Ziqi Yang, Jiyi Zhang, Ee-Chien Chang, Zhenkai Liang, "Neural Network Inversion in Adversarial Setting via
Background Knowledge Alignment", ACM CCS 2019, https://dl.acm.org/doi/10.1145/3319535.3354261. Official code:
https://github.com/yziqi/adversarial-model-inversion (``model.py``: ``Inversion``; ``train_inversion.py``).
This module follows those two files; the code is our own.

The attacker trains an *inversion model* (a decoder from a prediction vector to an image) on its auxiliary
(public) images: each is sent to the target once (one query per image, through the attacker's view), the
released vector is truncated to its ``m`` largest entries and *aligned* as the official ``Inversion.forward``
does it (``torch.topk(x, truncation)``; ``clamp(log(topk), min=-1000) + c``; shifted up by ``relu(-min)`` so the
smallest kept entry is not negative; scattered back into zeros), and the decoder is trained to reconstruct the
image (``F.mse_loss(reconstruction, data)``) with Adam (``lr=0.0002, betas=(0.5, 0.999), amsgrad=True``),
batch size 128, 100 epochs (``train_inversion.py``; its ``--lr``/``--momentum`` arguments are unused by the
inversion optimiser), ``ngf = 128``, ``c = 50``, ``truncation = nz`` (all classes; ``--truncation 530`` with
``--nz 530``). The decoder is the official one (``ConvTranspose2d(nz, ngf*8, 4, 1, 0)`` to 4x4, then
``ConvTranspose2d(.., 4, 2, 1)`` doublings with ``BatchNorm2d`` + ``Tanh``, a last ``ConvTranspose2d`` to the
image channels and ``Sigmoid``) scaled to the image size: the first layer makes ``H/2**n x W/2**n`` (the
official 4x4 for 64 px: n = 4), n stride-2 layers double it, and the widths are ``ngf * 2**(n-1) ... ngf``
(the official ``ngf*8 .. ngf`` for n = 4). See :func:`decoder_layout`.

At attack time the decoder is fed *class representatives*: for identity ``y`` the one-hot vector ``e_y`` (the
identity's entry set to 1), aligned like any released vector, and its image is returned for every requested
sample of ``y`` (the decoder is deterministic: the samples of one identity are the same image). No query is
made at attack time; the queries are those of training the decoder (one per public image), charged again
whenever the cached decoder is re-used (``self.context.cache``).

Deliberate differences from the official code:

* **Zero entries are not released.** An entry the API released as exactly 0 (a top-k or rounding defense, the
  zeros of a one-hot vector) is treated like a truncated one: it is left at 0 in the decoder's input, and the
  shift is taken over the non-zero kept entries only. The official code takes ``log(0)``, clamps it to -1000 and
  then shifts every kept entry up by about 950 (it never meets exact zeros: it inverts full float softmax
  vectors). Without this the one-hot class representative would be ``1000 * e_y``, far from any vector the
  decoder was trained on; with it, ``c * e_y``: a maximally confident top-1 release.
* **Top-k access.** ``requires = {topk}`` (every black-box target has it, and so does the ``top-k`` access
  level): with ``probs`` the full released vector is read and truncated to ``m`` as the paper does; with only
  ``topk`` (a top-k API) the released top-``min(m, k)`` entries *are* the truncated vector (the other entries 0,
  not released). The values are aligned as released (no re-normalisation: the official alignment takes
  ``log`` and shifts, it does not re-normalise).
* **The class-representative use** (one-hot inputs) replaces the official script's inversion of the
  victims' own prediction vectors (``test1``/``test2``: FaceScrub's train/test images): here the attack is
  asked for identities, not for a victim's released vector.
* Only the public images are used (no held-out victim set to pick the best epoch: the official script keeps
  the epoch with the lowest reconstruction error on the target's *training* data, which an attacker does not
  hold); the decoder after the last epoch is used.
* ``max_public`` may cap the number of public images queried (default: all, as official).
* **Budget planning (our addition; the paper has no query budget).** Under a query budget the attack first
  plans: it queries only the first public images it can afford, one query each, within what is left of the
  budget (:func:`~invertkit.core.interfaces.access.affordable`, the whole budget: nothing is queried at attack
  time), and trains the decoder on those. Fewer public images than it has means a weaker decoder, never a
  failed run; the result says so (``extras["exhausted"] = True``, with ``public_images`` and
  ``planned_public_images``), and the cached decoder is keyed by the planned count. With no budget nothing
  changes. Should a wrapper still refuse a query, the decoder is trained on the images answered before it (no
  image answered: the untrained decoder, made from ``train_seed``).

The decoder and its training (:class:`InversionModel`, :func:`train_inversion`, :func:`derived_inversion`)
are shared with Zhu et al.'s label-only attack (``zhu_label_only.py``), which trains the same decoder on
pseudo-confidence vectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import QueryBudgetExceeded, ShapeError, UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.access import affordable
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult

__all__ = ["InversionConfig", "InversionModel", "PublicPlan", "YangInversion", "align", "decoder_layout",
           "derived_inversion", "plan_public", "public_images", "released_vectors", "train_inversion"]


# ------------------------------------------------------------------------------------------ alignment
def align(conf: Tensor, truncation: int | None, c: float) -> Tensor:
    """The official truncation + alignment of released vectors ``conf`` (N, K): keep the ``truncation``
    largest entries, ``log`` them, add ``c``, shift the row up by ``relu(-min)`` and scatter back into zeros.
    Entries that are exactly 0 (not released) stay 0 and take no part in the shift (see the module
    docstring)."""
    k = conf.shape[1] if truncation is None else max(1, min(int(truncation), conf.shape[1]))
    values, indices = torch.topk(conf, k, dim=1)
    released = values > 0
    logs = torch.where(released, torch.log(values.clamp_min(1e-38)).clamp_min(-1000.0) + c, torch.zeros_like(values))
    lowest = torch.where(released, logs, torch.full_like(logs, math.inf)).min(1, keepdim=True).values
    lowest = torch.where(torch.isfinite(lowest), lowest, torch.zeros_like(lowest))
    logs = torch.where(released, logs + F.relu(-lowest), logs)
    return torch.zeros_like(conf).scatter(1, indices, logs)


# --------------------------------------------------------------------------------------------- decoder
def decoder_layout(height: int, width: int) -> tuple[int, int, int]:
    """``(h0, w0, n)``: the first transposed convolution makes an ``h0 x w0`` map and ``n`` stride-2 layers
    double it to ``height x width``. ``n`` is the most halvings that keep both sides whole and at least 4 (the
    official 64 px: 4x4 and n = 4; 32 px: 4x4, n = 3; 28 px: 7x7, n = 2; 8 px: 4x4, n = 1)."""
    n = 0
    h, w = int(height), int(width)
    while h % 2 == 0 and w % 2 == 0 and h // 2 >= 4 and w // 2 >= 4:
        h, w, n = h // 2, w // 2, n + 1
    return h, w, n


class InversionModel(nn.Module):
    """The official inversion network (``model.py``: ``Inversion``) scaled to ``image_shape``: released vector
    -> :func:`align` -> transposed-convolution decoder -> image in [0, 1].

    ``representatives`` (a buffer, K x K) holds the vector fed for each identity at attack time (row ``y``);
    it travels with the network through the cache."""

    def __init__(self, num_classes: int, image_shape: tuple[int, int, int], *, ngf: int = 128,
                 truncation: int | None = None, c: float = 50.0) -> None:
        super().__init__()
        nc, height, width = (int(s) for s in image_shape)
        self.num_classes, self.image_shape = int(num_classes), (nc, height, width)
        self.truncation, self.c = truncation, float(c)
        h0, w0, n = decoder_layout(height, width)
        layers: list[nn.Module] = []
        if n == 0:
            layers += [nn.ConvTranspose2d(num_classes, nc, (h0, w0), 1, 0), nn.Sigmoid()]
        else:
            width_ = ngf * 2 ** (n - 1)
            layers += [nn.ConvTranspose2d(num_classes, width_, (h0, w0), 1, 0), nn.BatchNorm2d(width_), nn.Tanh()]
            for _ in range(n - 1):
                layers += [nn.ConvTranspose2d(width_, width_ // 2, 4, 2, 1), nn.BatchNorm2d(width_ // 2), nn.Tanh()]
                width_ //= 2
            layers += [nn.ConvTranspose2d(width_, nc, 4, 2, 1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*layers)
        self.register_buffer("representatives", torch.eye(num_classes))

    def decode(self, aligned: Tensor) -> Tensor:
        """The decoder on already aligned vectors."""
        return self.decoder(aligned.view(len(aligned), self.num_classes, 1, 1)).view(len(aligned), *self.image_shape)

    def forward(self, conf: Tensor) -> Tensor:
        return self.decode(align(conf, self.truncation, self.c))

    @torch.no_grad()
    def represent(self, labels: Tensor) -> Tensor:
        """The images of the class representatives of ``labels`` (eval mode)."""
        self.eval()
        dev = self.representatives.device
        return self(self.representatives[labels.to(dev)]).cpu()


class InversionConfig(AttackConfig):
    """Decoder and training options shared by the training-based inversion attacks; defaults are the official
    ``train_inversion.py``'s."""

    epochs: int = Field(100, ge=1, description="training epochs over the public images (official: 100)")
    batch_size: int = Field(128, ge=1, description="mini-batch size (official: 128)")
    lr: float = Field(0.0002, gt=0, description="Adam learning rate (official: 0.0002, betas (0.5, 0.999), amsgrad)")
    ngf: int = Field(128, ge=1, description="decoder width: the last hidden layer has ngf channels (official: 128)")
    c: float = Field(50.0, description="added to the log-confidences before the shift (official: 50)")
    max_public: int | None = Field(None, ge=1, description="query at most this many public images (None: all)")
    train_seed: int = Field(1, ge=0, description="seed of the decoder's initialisation and batches (official "
                                                 "--seed 1); the decoder does not depend on the run's seed")


def train_inversion(model: InversionModel, conf: Tensor, images: Tensor, *, epochs: int, batch_size: int,
                    lr: float, seed: int) -> InversionModel:
    """Train ``model`` in place to reconstruct ``images`` from the released vectors ``conf`` (MSE; Adam with the
    official ``lr``, ``betas=(0.5, 0.999)``, ``amsgrad=True``, constant rate), through the one training loop
    :func:`invertkit.core.zoo.train.fit`. The vectors are aligned once (alignment has no parameter)."""
    from invertkit.core.zoo.train import fit

    if len(conf) != len(images) or len(conf) == 0:
        raise ShapeError(f"train_inversion(): {len(conf)} vectors and {len(images)} images (need as many, >0)")
    dev = next(model.parameters()).device
    aligned = align(conf.float(), model.truncation, model.c).to(dev)
    images = images.float().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999), amsgrad=True)

    def loss_fn(net: nn.Module, xb: Tensor, idx: Tensor, epoch: int) -> Tensor:
        return F.mse_loss(net.decode(xb), images[idx])

    fit(model, loss_fn, (aligned, torch.arange(len(aligned), device=dev)), epochs=epochs, batch_size=batch_size,
        seed=seed, optimizer=opt, schedule=False)
    loss = F.mse_loss(model.eval().decode(aligned), images)
    if not bool(torch.isfinite(loss)):
        raise UsageError(f"the inversion model diverged (loss {float(loss)}); lower lr (now {lr})")
    return model


# ------------------------------------------------------------------------------------------- plumbing
def public_images(attack: Attack) -> Tensor:
    """The attacker's public images (``attack.context.public_images``), capped at ``config.max_public``."""
    ctx = getattr(attack, "context", None)
    images = getattr(ctx, "public_images", None)
    if images is None or len(images) == 0:
        raise UsageError(f"attack '{attack.name}' trains its inversion model on the attacker's public images: set "
                         "attack.context = AttackContext(public_images=...) (the bench does) before running it")
    cap = attack.config.max_public
    return images if cap is None else images[:cap]


@dataclass
class PublicPlan:
    """The public images an attack can afford to query (``images``, the first of them), how many it has, and
    (once trained here) how many of the planned ones were answered before a wrapper refused a query."""

    images: Tensor
    available: int
    answered: int | None = None

    @property
    def planned(self) -> int:
        return len(self.images)

    @property
    def cut(self) -> bool:
        """The budget left some public images out."""
        return self.planned < self.available

    @property
    def refused(self) -> bool:
        """A wrapper refused a query of the planned ones (the decoder was trained on fewer)."""
        return self.answered is not None and self.answered < self.planned

    def facts(self, target: Any) -> dict[str, Any]:
        """The plan for ``result.extras`` (scalars): nothing without a budget and without a refusal (the run is
        as it always was); otherwise the counts, and ``exhausted`` where the budget cut the training set or a
        query was refused."""
        if target.budget is None and not (target.exhausted or self.refused):
            return {}
        out: dict[str, Any] = {"public_images": self.available, "planned_public_images": self.planned}
        if self.refused:
            out["answered_public_images"] = self.answered
        if self.cut or self.refused or target.exhausted:
            out["exhausted"] = True
        return out


def plan_public(attack: Attack, target: Any, *, each: int = 1) -> PublicPlan:
    """The first public images whose ``each`` queries apiece fit in what is left of ``target``'s budget (all of
    them without a budget; see :func:`~invertkit.core.interfaces.access.affordable`)."""
    images = public_images(attack)
    return PublicPlan(images[: affordable(target, len(images), each=each)], len(images))


def derived_inversion(attack: Attack, target: Any, key: dict[str, Any], train: Callable[[], InversionModel],
                      build: Callable[[], InversionModel], plan: PublicPlan | None = None) -> InversionModel:
    """``train()`` (which queries ``target`` through its view), or the cached result of an earlier identical
    training through ``attack.context.cache`` (which charges its queries again). A ``plan`` that left public
    images out keys the decoder by the planned count (a plan of every image keeps the key it always had)."""
    from invertkit.core.zoo.scenario import fingerprint

    cache = getattr(getattr(attack, "context", None), "cache", None)
    if cache is None:
        return train().eval()
    cfg = attack.config.model_dump(mode="json")
    full = {"what": attack.name, "data": fingerprint(public_images(attack)), "shape": list(target.input_shape),
            "classes": target.num_classes, "config": cfg, **key}
    if plan is not None and plan.cut:
        full["planned_public_images"] = plan.planned
    return cache(full, train, build, label=attack.name)


def untrained(build: Callable[[], InversionModel], seed: int) -> InversionModel:
    """The decoder as ``build`` makes it from ``seed``, untrained (a budget that afforded no public image)."""
    torch.manual_seed(seed)
    return build().eval()


@torch.no_grad()
def released_vectors(target: Any, images: Tensor, truncation: int | None, batch_size: int = 512) -> Tensor:
    """What the attacker's view releases for ``images`` (one query per image), as (N, K) vectors: the full
    released vector where ``probs`` is granted (truncation happens in :func:`align`), else the released
    top-``min(m, k)`` entries scattered into zeros. Should the target refuse a batch past its budget, the
    vectors of the images answered before it (fewer rows than ``images``)."""
    k_classes = target.num_classes
    out = []
    for i in range(0, len(images), batch_size):
        xb = images[i : i + batch_size].to(target.device)
        try:
            if target.has(C.PROBS):
                out.append(target.probs(xb).float().cpu())
            else:
                k = k_classes if truncation is None else min(int(truncation), k_classes)
                values, indices = target.topk(xb, k)
                out.append(torch.zeros(len(xb), k_classes).scatter(1, indices.long().cpu(), values.float().cpu()))
        except QueryBudgetExceeded:  # ends with what it has
            break
    return torch.cat(out) if out else torch.zeros(0, k_classes)


# --------------------------------------------------------------------------------------------- attack
class YangInversion(Attack):
    name = "yang-inversion"
    paper = "https://dl.acm.org/doi/10.1145/3319535.3354261"
    summary = ("Black-box (scores, top-k): a decoder from truncated prediction vectors to images, trained on "
               "public images' released vectors; inverts one-hot class representatives.")
    requires = frozenset({C.TOPK})
    needs_prior = False

    class Config(InversionConfig):
        truncation: int | None = Field(None, ge=1, description="m: keep the m largest released entries (the "
                                       "paper's truncation; official default: every class)")

    def build(self, target: Any) -> InversionModel:
        return InversionModel(target.num_classes, tuple(target.input_shape), ngf=self.config.ngf,
                              truncation=self.config.truncation, c=self.config.c).to(target.device)

    def inversion_model(self, target: Any, plan: PublicPlan | None = None) -> InversionModel:
        """The trained decoder for ``target`` (trained here, or loaded from the cache and paid for again) on the
        public images of ``plan`` (default: those the budget affords, see :func:`plan_public`)."""
        cfg = self.config
        access = "probs" if target.has(C.PROBS) else "topk"
        plan = plan_public(self, target) if plan is None else plan
        if plan.planned == 0:
            return untrained(lambda: self.build(target), cfg.train_seed)

        def train() -> InversionModel:
            conf = released_vectors(target, plan.images, cfg.truncation)
            plan.answered = len(conf)
            if len(conf) == 0:  # a wrapper refused the first batch
                return untrained(lambda: self.build(target), cfg.train_seed)
            torch.manual_seed(cfg.train_seed)
            model = self.build(target)
            return train_inversion(model, conf, plan.images[: len(conf)], epochs=cfg.epochs,
                                   batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.train_seed)

        return derived_inversion(self, target, {"access": access, "max_topk": target.max_topk}, train,
                                 lambda: self.build(target), plan)

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        plan = plan_public(self, target)
        model = self.inversion_model(target, plan)
        images = model.represent(labels)
        return AttackResult(self.name, images, labels, torch.zeros(len(labels)), 0, 0.0, seed, {},
                            extras=plan.facts(target))


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(YangInversion)
