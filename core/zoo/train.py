"""Generic, seeded classifier training (the recipe every scenario's target and evaluation model use)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invertkit.core.cache import atomic_path


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
    checkpoint: str | Path | None = None,
) -> TrainReport:
    """Adam + cosine schedule + cross-entropy, with random-shift augmentation. Deterministic for a seed on the CPU.

    With ``checkpoint``, the state (model, optimiser, schedule, random generator, epoch) is saved after
    every epoch and an interrupted run resumes from it; the file is removed when training finishes.
    Resuming gives the same model as an uninterrupted run.
    """
    g = seed_everything(seed)
    x, y = train
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, (len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0 = time.perf_counter()
    start = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.is_file():
        # our own file, read with the restricted (tensor-only) loader: nothing is unpickled
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        g.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["epoch"])
    for epoch in range(start, epochs):
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
            progress(epoch + 1, epochs, float(loss.detach()))
        if ckpt is not None:  # written under a temporary name of this writer's own, then renamed into place
            with atomic_path(ckpt) as tmp:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "rng": g.get_state(), "torch_rng": torch.get_rng_state(), "epoch": epoch + 1}, tmp)
    if ckpt is not None and ckpt.is_file():
        ckpt.unlink()
    model.eval()
    return TrainReport(
        train_acc=accuracy(model, x, y),
        test_acc=accuracy(model, *test),
        seconds=time.perf_counter() - t0,
        epochs=epochs,
    )
