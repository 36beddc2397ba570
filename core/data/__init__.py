"""Dataset adapters' common types, the identity-disjoint private/public split, and the generic readers the
bundled adapters share: data-root resolution, IDX files (MNIST-style), and folders of image files.

Where data is looked for (:func:`data_roots`): the preset's ``root`` if one is given (and only there), else
``$INVERTKIT_DATA/<name>`` (``INVERTKIT_DATA`` may list several folders, separated like ``PATH``), else the
adapter's known system locations (e.g. Debian's ``/usr/share/datasets/<name>``). When nothing is found the
adapter raises :class:`~invertkit.core.errors.DataNotFoundError` naming every path it tried and the layout
it expects.

The readers live in :mod:`~invertkit.core.data.idx` (IDX files) and :mod:`~invertkit.core.data.images`
(folders of image files); adapters import them from here.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from invertkit.core.data.idx import find_idx, idx_split_files, load_idx_pairs, read_idx
from invertkit.core.data.images import IMAGE_EXTENSIONS, Box, center_box, list_images, load_image_files
from invertkit.core.errors import DataNotFoundError, UsageError
from invertkit.core.interfaces.config import ComponentConfig, build_config

__all__ = [
    "DEBIAN_DATASETS",
    "ENV_DATA",
    "IMAGE_EXTENSIONS",
    "Box",
    "DatasetAdapter",
    "Split",
    "center_box",
    "data_roots",
    "find_idx",
    "identity_split",
    "idx_split_files",
    "list_images",
    "load_idx_pairs",
    "load_image_files",
    "locate",
    "read_idx",
]

ENV_DATA = "INVERTKIT_DATA"
#: Debian's ``dataset-*`` packages install here (e.g. ``dataset-fashion-mnist``)
DEBIAN_DATASETS = Path("/usr/share/datasets")

T = TypeVar("T")


class DatasetAdapter(ABC):
    """A dataset plugin: ``load(root, **options)`` returns all images ``(N, C, H, W)`` float in ``[0, 1]``
    and ``long`` labels (``-1`` for unlabelled images).

    ``options`` are validated by the adapter's nested ``Config`` (unknown or out-of-range options are one
    :class:`~invertkit.core.errors.ConfigError` line); adapters without options keep the empty default.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    #: where the data is expected, for the "missing dataset" message
    layout: ClassVar[str] = ""

    class Config(ComponentConfig):
        """No options."""

    @abstractmethod
    def load(self, root: str | None = None) -> tuple[Tensor, Tensor]: ...

    def schema(self, **options: Any) -> Any:
        """For records (tabular data, ``load`` giving ``(N, D)`` feature vectors): their
        :class:`~invertkit.core.data.records.RecordSchema` (the columns, and which of them encode the sensitive
        attribute an attribute-inference attacker does not know). ``None`` (the default): images."""
        return None

    def options(self, values: dict[str, Any] | None = None) -> Any:
        """``values`` validated into this adapter's ``Config``."""
        return build_config(type(self).Config, values, what=f"dataset '{self.name}'")


# ---------------------------------------------------------------------------------------------- data roots
def data_roots(name: str, root: str | os.PathLike[str] | None = None, *, system: Iterable[str | Path] = ()) -> list[Path]:
    """The folders to search for dataset ``name``, in order: ``[root]`` alone when given; else
    ``$INVERTKIT_DATA/<name>`` for each folder listed in ``INVERTKIT_DATA``, then ``system``."""
    if root is not None and str(root) != "":
        return [Path(root).expanduser()]
    out: list[Path] = []
    for part in (os.environ.get(ENV_DATA) or "").split(os.pathsep):
        if part.strip():
            out.append(Path(part.strip()).expanduser() / name)
    out.extend(Path(p).expanduser() for p in system)
    seen: set[str] = set()
    unique = []
    for p in out:
        if str(p) not in seen:
            seen.add(str(p))
            unique.append(p)
    return unique


def locate(
    name: str,
    root: str | os.PathLike[str] | None,
    probe: Callable[[Path], T | None],
    *,
    layout: str,
    system: Iterable[str | Path] = (),
    hint: str = "",
) -> T:
    """The first non-``None`` ``probe(folder)`` over :func:`data_roots`; else one
    :class:`DataNotFoundError` line naming every folder tried, the expected layout and ``hint``."""
    tried = data_roots(name, root, system=system)
    for folder in tried:
        if folder.is_dir():
            found = probe(folder)
            if found is not None:
                return found
    where = ", ".join(str(p) for p in tried) if tried else f"nowhere (no root given and {ENV_DATA} is not set)"
    how = ("a root was given, so only it was searched" if root is not None
           else f"set {ENV_DATA}=DIR to use DIR/{name}, or give the preset a root")
    msg = f"dataset '{name}' not found; looked in: {where}. Expected layout: {layout}."
    if hint:
        msg += f" {hint}."
    raise DataNotFoundError(msg + f" ({how})")


# ---------------------------------------------------------------------------------------------- the split
@dataclass
class Split:
    """The private set (the target's training data; labels re-indexed 0..K-1) and the public set (the prior's)."""

    private_train: tuple[Tensor, Tensor]
    private_test: tuple[Tensor, Tensor]
    public: tuple[Tensor, Tensor]
    private_classes: tuple[int, ...]
    public_classes: tuple[int, ...]
    #: records (tabular data): the :class:`~invertkit.core.data.records.RecordSchema` the adapter gives; ``None``
    #: for images
    schema: Any = None

    @property
    def num_classes(self) -> int:
        return len(self.private_classes)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one input: ``(C, H, W)`` for images, ``(D,)`` for records."""
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
