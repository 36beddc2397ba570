"""Generic, seeded classifier training (the recipe every scenario's target and evaluation model use)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invertkit.core.cache import atomic_path
from invertkit.core.errors import UsageError


@dataclass
class TrainReport:
    train_acc: float
    test_acc: float
    seconds: float
    epochs: int


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / max(1, len(x))


#: random translation by up to ``max_shift`` pixels (zero padding), the usual small-image augmentation: one
#: implementation, :func:`invertkit.core.augment.random_shift`, re-exported under its old name
from invertkit.core.augment import random_shift as augment  # noqa: E402


#: a loss: ``(model, x, y, epoch) -> scalar``; ``epoch`` counts from 0
LossFn = Callable[[nn.Module, Tensor, Tensor, int], Tensor]


def cross_entropy(model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> Tensor:
    """The plain classification loss, as a :data:`LossFn`. A model that ``trains_with_labels`` (a margin head:
    ArcFace, CosFace) is given the labels, so that its training margin applies."""
    return F.cross_entropy(model(x, y) if getattr(model, "trains_with_labels", False) else model(x), y)


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
    progress: Callable[[int, int, float], None] | None = None,
    checkpoint: str | Path | None = None,
) -> float:
    """The one training loop: train ``model`` for ``epochs`` minimising ``loss_fn``; returns the seconds it
    took. Deterministic on a CPU for a ``seed``.

    By default: Adam (``lr``, ``weight_decay``) on ``params`` (default every parameter) with a cosine
    schedule over all steps, over shuffled mini-batches of ``data`` with random shifts. ``optimizer`` and
    ``batches`` (``(epoch, generator) -> (x, y)`` pairs) replace those; ``schedule=False`` keeps the learning
    rate; ``on_epoch(epoch, model)`` runs after ``model.train()`` at the start of every epoch (to freeze
    BatchNorm statistics, change a schedule, ...). ``progress(done, total, loss)`` is called after every
    epoch with the epoch's last loss. The model is left in eval mode.

    With ``checkpoint``, the state (model, optimiser, schedule, random generators, epoch) is saved after
    every epoch and an interrupted run resumes from it; the file is removed when training finishes.
    Resuming gives the same model as an uninterrupted run.
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
    start = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.is_file():
        # our own file, read with the restricted (tensor-only) loader: nothing is unpickled
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["opt"])
        if sched is not None:
            sched.load_state_dict(state["sched"])
        g.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["epoch"])
    for epoch in range(start, epochs):
        model.train()
        if on_epoch is not None:
            on_epoch(epoch, model)
        stream = batches(epoch, g) if batches is not None else minibatches(data, batch_size, g, max_shift, drop_last)  # type: ignore[arg-type]
        loss = None
        for xb, yb in stream:
            loss = loss_fn(model, xb, yb, epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if sched is not None:
                sched.step()
        if progress is not None:
            progress(epoch + 1, epochs, float(loss.detach()) if loss is not None else math.nan)
        if ckpt is not None:  # written under a temporary name of this writer's own, then renamed into place
            state = {"model": model.state_dict(), "opt": optimizer.state_dict(), "rng": g.get_state(),
                     "torch_rng": torch.get_rng_state(), "epoch": epoch + 1}
            if sched is not None:
                state["sched"] = sched.state_dict()
            with atomic_path(ckpt) as tmp:
                torch.save(state, tmp)
    if ckpt is not None and ckpt.is_file():
        ckpt.unlink()
    model.eval()
    return time.perf_counter() - t0


def train_classifier(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    *,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 1e-4,
    max_shift: int = 1,
    seed: int = 0,
    progress=None,
    checkpoint: str | Path | None = None,
) -> TrainReport:
    """Adam + cosine schedule + cross-entropy, with random-shift augmentation: :func:`fit` with
    :func:`cross_entropy`, reporting train and test accuracy. Deterministic for a seed on the CPU; with
    ``checkpoint`` an interrupted run resumes to the same model (see :func:`fit`)."""
    seconds = fit(model, cross_entropy, train, epochs=epochs, lr=lr, batch_size=batch_size,
                  weight_decay=weight_decay, max_shift=max_shift, seed=seed, progress=progress,
                  checkpoint=checkpoint)
    return TrainReport(
        train_acc=accuracy(model, *train),
        test_acc=accuracy(model, *test),
        seconds=seconds,
        epochs=epochs,
    )
