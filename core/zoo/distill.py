"""Model augmentation (MA): surrogate "augmented" models distilled from the target on *public* data only.

Nguyen et al., "Re-thinking Model Inversion Attacks Against Deep Neural Networks", CVPR 2023
(https://arxiv.org/abs/2304.01669; LOMMA). The attacker has no private data, so the augmented (student)
models learn the target's (teacher's) soft labels on the public images. Their official
``train_augmodel`` (``engine.py``) minimises

    KL(softmax(t / T) || softmax(s / T)) / T**2      (``nn.KLDivLoss(reduction="sum")`` / batch / T**2)

with SGD(lr 0.01, momentum 0.9, weight decay 1e-4), a step schedule (x0.5 every 20 epochs), batch 64,
20 epochs, temperature T = 1 and no input augmentation (their students are ImageNet-pretrained
EfficientNet-B0/B1/B2; ours start from scratch: nothing is downloaded). That is variant ``"kl"``, the default,
with no augmentation by default (``augment=True`` adds a random shift of up to ``max_shift`` pixels: not in
the official recipe).

Variant ``"kl_l2"`` is **not from the paper or its official code**: it comes from a third-party reproduction
and adds ``l2_weight * mean((s - t)**2)``, an L2 penalty on the student-teacher *logit* difference: the KL
term only matches the softmax (logits up to a per-sample shift), the L2 term makes the student reproduce the
teacher's logits themselves, which an attack's logit-space losses (LOMMA's logit loss, PLG-MI's margin) see.

The teacher is the attacker's view of the target (as defended): every public image it labels is a query.
Without augmentation the teacher's answer for an image never changes, so it is asked once per image (the
official loop asks it again every epoch: the same numbers, 20 times the queries).

:func:`distill` trains one student; :func:`augmented_models` trains (or loads from the attack's cache, which
charges the queries again) the students of a target for a list of architectures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invertkit.core import progress
from invertkit.core.errors import ConfigError, ShapeError, UsageError
from invertkit.core.zoo.arch import build_architecture
from invertkit.core.zoo.train import fit

Variant = Literal["kl", "kl_l2"]
VARIANTS: tuple[str, ...] = ("kl", "kl_l2")

#: the official MA recipe (``config/celeba/training_augmodel/*.json`` + ``engine.train_augmodel``)
DEFAULTS: dict[str, Any] = {
    "epochs": 20, "lr": 0.01, "temperature": 1.0, "batch_size": 64, "momentum": 0.9, "weight_decay": 1e-4,
    "step_size": 20, "gamma": 0.5, "l2_weight": 1.0, "max_shift": 1,
}

__all__ = ["DEFAULTS", "DistillReport", "VARIANTS", "augmented_models", "QueriedTeacher", "distill", "distill_loss", "logit_gap"]


@dataclass
class DistillReport:
    """What :func:`distill` did: the loss at the end, the student's agreement with the teacher (top-1) and
    its mean squared logit gap to the teacher, both on the public images it was trained on."""

    variant: str
    epochs: int
    seconds: float
    final_loss: float
    agreement: float
    logit_gap: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def distill_loss(student_logits: Tensor, teacher_logits: Tensor, *, variant: str = "kl", temperature: float = 1.0,
                 l2_weight: float = 1.0) -> Tensor:
    """The MA distillation loss of a batch: ``KL(p_t || p_s) / T**2`` (batch mean), plus for ``kl_l2``
    ``l2_weight * mean((s - t)**2)`` over the batch and the classes."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown distillation variant '{variant}' (known: {', '.join(VARIANTS)})")
    if student_logits.shape != teacher_logits.shape:
        raise ShapeError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                  reduction="batchmean", log_target=True) / (t * t)
    if variant == "kl":
        return kl
    return kl + l2_weight * F.mse_loss(student_logits, teacher_logits)


@torch.no_grad()
def _logits(net: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    dev = _device(net)
    return torch.cat([net(x[i : i + batch_size].to(dev)).float().cpu() for i in range(0, len(x), batch_size)])


def _device(net: nn.Module) -> torch.device:
    p = next(net.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def logit_gap(student: nn.Module, teacher: nn.Module, images: Tensor) -> tuple[float, float]:
    """``(top-1 agreement, mean squared logit difference)`` of ``student`` and ``teacher`` on ``images``
    (both in eval mode; modes are restored)."""
    modes = (student.training, teacher.training)
    student.eval()
    teacher.eval()
    try:
        s, t = _logits(student, images), _logits(teacher, images)
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    return float((s.argmax(1) == t.argmax(1)).float().mean()), float(F.mse_loss(s, t))


def distill(
    teacher: nn.Module,
    student: nn.Module,
    public_images: Tensor,
    *,
    variant: str = "kl",
    epochs: int = DEFAULTS["epochs"],
    lr: float = DEFAULTS["lr"],
    temperature: float = DEFAULTS["temperature"],
    l2_weight: float = DEFAULTS["l2_weight"],
    seed: int = 0,
    augment: bool = False,
    batch_size: int = DEFAULTS["batch_size"],
    momentum: float = DEFAULTS["momentum"],
    weight_decay: float = DEFAULTS["weight_decay"],
    step_size: int = DEFAULTS["step_size"],
    gamma: float = DEFAULTS["gamma"],
    max_shift: int = DEFAULTS["max_shift"],
) -> DistillReport:
    """Train ``student`` in place to imitate ``teacher`` on ``public_images`` (no labels used).

    ``teacher`` is a network or a target (anything callable on a batch that returns logits or
    log-probabilities). Without ``augment`` it is asked once per image; with it (a random shift of up to
    ``max_shift`` pixels, which the official recipe does not have) on the very shifted batch the student sees. SGD with momentum and a step
    schedule (``lr * gamma ** (epoch // step_size)``), deterministic for a ``seed`` on the CPU. The student
    is left in eval mode; the teacher's parameters and mode are untouched.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown distillation variant '{variant}' (known: {', '.join(VARIANTS)})")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("step_size", step_size)):
        if value < 1:
            raise ConfigError(f"distill(): {name} must be at least 1, got {value}")
    for name, value in (("lr", lr), ("temperature", temperature)):
        if not value > 0:
            raise ConfigError(f"distill(): {name} must be positive, got {value}")
    if l2_weight < 0:
        raise ConfigError(f"distill(): l2_weight must be non-negative, got {l2_weight}")
    if public_images.dim() != 4 or len(public_images) == 0:
        raise ShapeError(f"distill() needs a non-empty (N, C, H, W) batch of public images, got {tuple(public_images.shape)}")
    if teacher is student:
        raise UsageError("distill(): the student must be a different network from the teacher")
    dev = _device(student)
    teacher_mode = teacher.training
    teacher.eval()
    flags = [p.requires_grad for p in teacher.parameters()]
    teacher.requires_grad_(False)
    t_dev = _device(teacher)
    last = [math.nan]
    # without augmentation the teacher's answer per image is fixed: ask it once (its index rides as the label)
    fixed = None if augment else _logits(teacher, public_images)

    def loss_fn(model: nn.Module, xb: Tensor, yb: Tensor, epoch: int) -> Tensor:
        if fixed is not None:
            t = fixed[yb.long().cpu()].to(dev)
        else:
            with torch.no_grad():
                t = teacher(xb.to(t_dev)).float().to(dev)
        loss = distill_loss(model(xb.to(dev)), t, variant=variant, temperature=temperature, l2_weight=l2_weight)
        last[0] = float(loss.detach())
        return loss

    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)

    def on_epoch(epoch: int, model: nn.Module) -> None:
        for group in opt.param_groups:
            group["lr"] = lr * gamma ** (epoch // step_size)

    try:
        seconds = fit(student, loss_fn, (public_images, torch.arange(len(public_images))), epochs=epochs,
                      batch_size=batch_size, max_shift=max_shift if augment else 0, seed=seed, optimizer=opt,
                      schedule=False, on_epoch=on_epoch)
    finally:
        for p, flag in zip(teacher.parameters(), flags):
            p.requires_grad_(flag)
        teacher.train(teacher_mode)
    if fixed is not None:  # against the answers already bought: no new queries
        student.eval()
        s_logits = _logits(student, public_images)
        agreement, gap = float((s_logits.argmax(1) == fixed.argmax(1)).float().mean()), float(F.mse_loss(s_logits, fixed))
    else:
        agreement, gap = logit_gap(student, teacher, public_images)
    if not math.isfinite(last[0]):
        raise UsageError(f"distillation diverged (loss {last[0]}); lower lr (now {lr})")
    return DistillReport(variant, epochs, seconds, last[0], agreement, gap)


def augmented_models(
    teacher,  # noqa: ANN001 - the attacker's view of the target (a TargetModel)
    public_images: Tensor,
    plugins,  # noqa: ANN001 - invertkit.core.plugins.Plugins
    archs: list[str] | tuple[str, ...] = ("small-cnn", "small-mlp"),
    variant: str = "kl",
    *,
    cache=None,  # noqa: ANN001 - AttackContext.cache, or None: train afresh
    arch_options: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    augment: bool = False,
    **hyper: Any,
) -> list[nn.Module]:
    """MA's augmented models of ``teacher`` (the target as the attacker sees it, queried through its public
    API: every image it labels is counted): one student per entry of ``archs`` (registry names, or
    ``timm:<name>``), distilled on ``public_images``. With ``cache`` (the bench's per-(target, defense) cache
    of derived artifacts) each is trained once per content key and re-used after, its queries charged again.
    Student ``i`` is seeded ``seed + i``. ``hyper`` overrides :data:`DEFAULTS`. Returns the students in eval
    mode, in the order of ``archs``."""
    from invertkit.core.zoo.scenario import fingerprint

    unknown_keys = sorted(set(hyper) - set(DEFAULTS))
    if unknown_keys:
        raise ConfigError(f"augmented_models(): unknown option(s) {unknown_keys} (known: {sorted(DEFAULTS)})")
    if variant not in VARIANTS:
        raise ConfigError(f"unknown distillation variant '{variant}' (known: {', '.join(VARIANTS)})")
    if not archs:
        raise UsageError("augmented_models() needs at least one architecture")
    cfg = {**DEFAULTS, **hyper}
    net_teacher = QueriedTeacher(teacher)
    data_key = fingerprint(public_images)
    shape = tuple(teacher.input_shape)
    out: list[nn.Module] = []
    for i, arch in enumerate(archs):
        opts = dict((arch_options or {}).get(arch, {}))
        student_seed = seed + i

        def build(arch: str = arch, opts: dict[str, Any] = opts, s: int = student_seed) -> nn.Module:
            torch.manual_seed(s)
            return build_architecture(plugins, arch, teacher.num_classes, shape, opts).to(teacher.device)

        def train(build=build, s: int = student_seed, arch: str = arch) -> nn.Module:  # noqa: ANN001
            net = build()
            with progress.task(f"MA: distilling student '{arch}' from the target's answers", total=cfg["epochs"],
                               unit="epoch") as t:
                report = distill(net_teacher, net, public_images, variant=variant, seed=s, augment=augment, **cfg)
                t.advance(report.epochs, info=f"agreement {report.agreement:.3f}")
            return net

        if cache is None:
            out.append(train().eval())
            continue
        key = {"what": "ma-student", "arch": arch, "arch_options": opts, "data": data_key, "variant": variant,
               "cfg": cfg, "augment": augment, "seed": student_seed}
        out.append(cache(key, train, build, label=f"ma-{variant}-{arch.replace(':', '-')}"))
    return out


class QueriedTeacher(nn.Module):
    """A target as a distillation teacher: logits (or log-probabilities, the same up to a per-row constant)
    through its public API, so every image it labels is counted as a query."""

    def __init__(self, target) -> None:  # noqa: ANN001
        super().__init__()
        self.target = target
        self.anchor = nn.Parameter(torch.zeros(0, device=target.device), requires_grad=False)  # device and mode

    def forward(self, x: Tensor) -> Tensor:
        from invertkit.core.interfaces.capability import Capability

        out = self.target.logits(x) if self.target.has(Capability.LOGITS) else self.target.log_probs(x)
        return out.detach()
