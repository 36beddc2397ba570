"""IDX files (LeCun's MNIST format), plain or gzipped: :func:`read_idx` reads one, :func:`idx_split_files`
finds a folder's ``(images, labels)`` pairs and :func:`load_idx_pairs` loads them as one image tensor and its
labels. Import these from :mod:`invertkit.core.data`."""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from invertkit.core.errors import DataNotFoundError

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

