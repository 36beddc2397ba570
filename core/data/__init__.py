"""Dataset adapters' common types and the identity-disjoint private/public split."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from invertkit.core.errors import UsageError


class DatasetAdapter(ABC):
    """A dataset plugin: ``load(root)`` returns all images ``(N, C, H, W)`` float in ``[0, 1]`` and labels."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    #: where the data is expected, for the "missing dataset" message
    layout: ClassVar[str] = ""

    @abstractmethod
    def load(self, root: str | None = None) -> tuple[Tensor, Tensor]: ...


@dataclass
class Split:
    """The private set (the target's training data; labels re-indexed 0..K-1) and the public set (the prior's)."""

    private_train: tuple[Tensor, Tensor]
    private_test: tuple[Tensor, Tensor]
    public: tuple[Tensor, Tensor]
    private_classes: tuple[int, ...]
    public_classes: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.private_classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.private_train[0].shape[1:])  # type: ignore[return-value]


def identity_split(
    images: Tensor,
    labels: Tensor,
    private_classes: list[int] | tuple[int, ...],
    public_classes: list[int] | tuple[int, ...],
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Split:
    """Split by identity (class): no class is both private and public. The private part is further split
    per class into train/test (stratified, seeded) for the target's natural accuracy."""
    overlap = set(private_classes) & set(public_classes)
    if overlap:
        raise UsageError(f"private and public classes overlap: {sorted(overlap)}")
    g = torch.Generator().manual_seed(seed)
    tr_idx, te_idx = [], []
    for c in private_classes:
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < 2:
            raise UsageError(f"class {c} has {len(idx)} images; at least 2 are needed")
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = max(1, int(round(len(idx) * test_fraction)))
        te_idx.append(idx[:n_test])
        tr_idx.append(idx[n_test:])
    remap = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
    for new, old in enumerate(private_classes):
        remap[old] = new
    tr, te = torch.cat(tr_idx), torch.cat(te_idx)
    pub_mask = torch.isin(labels, torch.tensor(list(public_classes)))
    return Split(
        private_train=(images[tr], remap[labels[tr]]),
        private_test=(images[te], remap[labels[te]]),
        public=(images[pub_mask], labels[pub_mask]),
        private_classes=tuple(private_classes),
        public_classes=tuple(public_classes),
    )
