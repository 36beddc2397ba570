"""Generic, seeded classifier training (the recipe every scenario's target and evaluation model use)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def augment(x: Tensor, generator: torch.Generator, max_shift: int = 1) -> Tensor:
    """Random translation by up to ``max_shift`` pixels (zero padding): the usual small-image augmentation."""
    if max_shift <= 0:
        return x
    n = x.shape[0]
    pad = F.pad(x, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    h, w = x.shape[2], x.shape[3]
    rows = (torch.arange(h)[None, :] + dy[:, None])[:, :, None].expand(n, h, w)
    cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, :].expand(n, h, w)
    idx = (rows * pad.shape[3] + cols).reshape(n, 1, h * w).expand(n, x.shape[1], h * w)
    return pad.reshape(n, x.shape[1], -1).gather(2, idx).reshape_as(x)


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
) -> TrainReport:
    """Adam + cosine schedule + cross-entropy, with random-shift augmentation. Deterministic for a seed on the CPU."""
    g = seed_everything(seed)
    x, y = train
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, (len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            xb = augment(x[idx], g, max_shift)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if progress is not None:
            progress(epoch + 1, epochs, float(loss))
    model.eval()
    return TrainReport(
        train_acc=accuracy(model, x, y),
        test_acc=accuracy(model, *test),
        seconds=time.perf_counter() - t0,
        epochs=epochs,
    )
