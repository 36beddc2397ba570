"""Dataset adapters' common types, the identity-disjoint private/public split, and the generic readers the
bundled adapters share: data-root resolution, IDX files (MNIST-style), and folders of image files.

Where data is looked for (:func:`data_roots`): the preset's ``root`` if one is given (and only there), else
``$INVERTKIT_DATA/<name>`` (``INVERTKIT_DATA`` may list several folders, separated like ``PATH``), else the
adapter's known system locations (e.g. Debian's ``/usr/share/datasets/<name>``). When nothing is found the
adapter raises :class:`~invertkit.core.errors.DataNotFoundError` naming every path it tried and the layout
it expects.
"""

from __future__ import annotations

import gzip
import os
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor

from invertkit.core.errors import DataNotFoundError, UsageError
from invertkit.core.interfaces.config import ComponentConfig, build_config

ENV_DATA = "INVERTKIT_DATA"
#: Debian's ``dataset-*`` packages install here (e.g. ``dataset-fashion-mnist``)
DEBIAN_DATASETS = Path("/usr/share/datasets")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm")

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


# ---------------------------------------------------------------------------------------------- IDX files
_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    try:
        if magic == b"\x1f\x8b":  # gzip, whatever the file is called
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataNotFoundError(f"{path}: cannot be read ({exc})") from None


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """An IDX file (LeCun's MNIST format: magic ``00 00 <type> <ndim>``, big-endian uint32 dims, data),
    plain or gzipped, as a numpy array."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataNotFoundError(f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataNotFoundError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims)) if dims else 1
    if len(raw) - header < count * dtype.itemsize:
        raise DataNotFoundError(f"{path}: truncated IDX file ({len(raw) - header} data bytes, dims {dims} need "
                                f"{count * dtype.itemsize})")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def find_idx(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, also under the ``stem`` spelled with a dot before ``idx``
    (``train-images.idx3-ubyte``, as some mirrors name them)."""
    for s in (stem, stem.replace("-idx", ".idx")):
        for cand in (folder / s, folder / f"{s}.gz"):
            if cand.is_file():
                return cand
    return None


def idx_split_files(folder: Path, prefixes: Sequence[str] = ("train", "t10k")) -> list[tuple[Path, Path]] | None:
    """The complete ``(<prefix>-images-idx3-ubyte, <prefix>-labels-idx1-ubyte)`` pairs in ``folder``, or
    ``None`` when there is none; an images file without its labels (or the reverse) is an error."""
    pairs = []
    for pre in prefixes:
        img, lab = find_idx(folder, f"{pre}-images-idx3-ubyte"), find_idx(folder, f"{pre}-labels-idx1-ubyte")
        if (img is None) != (lab is None):
            have, miss = (img, "labels") if lab is None else (lab, "images")
            raise DataNotFoundError(f"{folder}: found {have.name} but not its {pre}-{miss}-idx*-ubyte[.gz] partner")
        if img is not None and lab is not None:
            pairs.append((img, lab))
    return pairs or None


def load_idx_pairs(pairs: Sequence[tuple[Path, Path]]) -> tuple[Tensor, Tensor]:
    """Images ``(N, 1, H, W)`` in ``[0, 1]`` and labels of IDX (images, labels) pairs, concatenated in order."""
    xs, ys = [], []
    for img_path, lab_path in pairs:
        imgs, labs = read_idx(img_path), read_idx(lab_path)
        if imgs.ndim != 3 or labs.ndim != 1 or len(imgs) != len(labs):
            raise DataNotFoundError(f"{img_path.name} {tuple(imgs.shape)} and {lab_path.name} {tuple(labs.shape)} "
                                    "are not an (N, H, W) image file and its (N,) labels")
        xs.append(torch.from_numpy(np.ascontiguousarray(imgs)))
        ys.append(torch.from_numpy(labs.astype(np.int64)))
    x = torch.cat(xs).unsqueeze(1)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    return x, torch.cat(ys)


# ---------------------------------------------------------------------------------------------- image files
def list_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively, hidden entries skipped), sorted by relative path."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                out.append(Path(dirpath) / f)
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


Box = tuple[int, int, int, int]


def center_box(width: int, height: int, crop_w: int, crop_h: int) -> Box:
    """The ``(left, top, right, bottom)`` box of a ``crop_w x crop_h`` crop at offset
    ``((height - crop_h) // 2, (width - crop_w) // 2)``."""
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def load_image_files(
    paths: Sequence[Path],
    *,
    size: int | tuple[int, int],
    channels: int = 3,
    crop: Callable[[int, int], Box | None] | None = None,
    workers: int | None = None,
) -> Tensor:
    """Decode ``paths`` with Pillow into one ``(N, channels, H, W)`` float tensor in ``[0, 1]``:
    each image is converted to RGB (``channels=3``) or grey (``1``), cropped to ``crop(width, height)``
    when given, and resized to ``size`` (bilinear, Pillow's antialiased resampling). Decoding runs on a
    thread pool (Pillow releases the GIL while decoding)."""
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise UsageError(f"channels must be 1 or 3, got {channels}")
    h, w = (size, size) if isinstance(size, int) else size
    mode = "RGB" if channels == 3 else "L"
    out = torch.empty((len(paths), channels, h, w), dtype=torch.float32)

    def one(i: int) -> None:
        p = paths[i]
        try:
            with Image.open(p) as im:
                im = im.convert(mode)
                if crop is not None:
                    box = crop(*im.size)
                    if box is not None:
                        im = im.crop(box)
                if im.size != (w, h):
                    im = im.resize((w, h), Image.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataNotFoundError(f"{p}: not a readable image ({exc})") from None
        t = torch.from_numpy(a.copy())
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
        out[i] = t.float().div_(255.0)

    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    if n_workers <= 1 or len(paths) < 16:
        for i in range(len(paths)):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            for _ in pool.map(one, range(len(paths))):
                pass
    return out


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
