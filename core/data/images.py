"""Folders of image files: :func:`list_images` lists them, :func:`load_image_files` decodes them (on a thread
pool) into one tensor, optionally through a crop such as :func:`center_box`. Import these from
:mod:`invertkit.core.data`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from invertkit.core.errors import DataNotFoundError, UsageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm")


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

