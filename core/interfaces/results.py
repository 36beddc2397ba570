"""Result types shared by attacks, metrics and the bench."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class AttackResult:
    """What one attack run produced.

    ``images`` are ``(N, C, H, W)`` in ``[0, 1]`` on the CPU; ``labels[i]`` is the identity that
    ``images[i]`` was reconstructed for; ``scores[i]`` the attack's own final objective for it (higher is
    better for the attacker); ``queries`` the number of input rows the attack sent to the target.
    """

    attack: str
    images: Tensor
    labels: Tensor
    scores: Tensor
    queries: int
    seconds: float
    seed: int
    config: dict[str, Any]
    latents: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.images = self.images.detach().float().cpu().clamp(0.0, 1.0)
        self.labels = self.labels.detach().long().cpu()
        self.scores = self.scores.detach().float().cpu()
        if self.latents is not None:
            self.latents = self.latents.detach().cpu()
        n = self.images.shape[0]
        if self.labels.shape != (n,) or self.scores.shape != (n,):
            raise ValueError(
                f"AttackResult: images {tuple(self.images.shape)}, labels {tuple(self.labels.shape)} and "
                f"scores {tuple(self.scores.shape)} disagree on N"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def select(self, index: Tensor) -> "AttackResult":
        return AttackResult(
            attack=self.attack,
            images=self.images[index],
            labels=self.labels[index],
            scores=self.scores[index],
            queries=self.queries,
            seconds=self.seconds,
            seed=self.seed,
            config=self.config,
            latents=None if self.latents is None else self.latents[index],
            extras=dict(self.extras),
        )


def empty_result(attack: str, shape: tuple[int, ...], config: dict[str, Any], seed: int) -> AttackResult:
    return AttackResult(
        attack=attack,
        images=torch.zeros((0, *shape)),
        labels=torch.zeros(0, dtype=torch.long),
        scores=torch.zeros(0),
        queries=0,
        seconds=0.0,
        seed=seed,
        config=config,
    )
