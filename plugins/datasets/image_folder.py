"""Any folder tree of images as an unlabelled public set (for a prior's training data): every ``.png``/``.jpg``/
``.jpeg``/``.bmp``/``.webp`` file under the root, in sorted path order, optionally centre-cropped, resized to
``size`` x ``size``; labels are all ``-1``.

Options (``load(root, size=64, channels=3, crop_fraction=1.0, limit=None, workers=None)``) are validated by
:class:`ImageFolder.Config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.data import DatasetAdapter, center_box, list_images, load_image_files, locate
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig


class FolderOptions(ComponentConfig):
    """How a folder's images are decoded (shared by ``image-folder`` and ``class-folder``)."""

    size: int = Field(64, ge=4, le=1024, description="output side in pixels (images are resized to size x size)")
    channels: Literal[1, 3] = Field(3, description="3 for RGB, 1 for grey")
    crop_fraction: float = Field(1.0, gt=0, le=1, description="centre crop side, as a fraction of the shorter "
                                 "image side, taken before resizing (1: no crop)")
    workers: int | None = Field(None, ge=1, description="decoding threads (default: up to 8)")

    def decode(self, files: list[Path]) -> Tensor:
        """``files`` decoded, centre-cropped to a square of ``crop_fraction`` of the shorter side, resized."""
        frac = self.crop_fraction

        def crop(w: int, h: int):  # noqa: ANN202
            if frac >= 1.0:
                return None
            side = max(1, round(min(w, h) * frac))
            return center_box(w, h, side, side)

        return load_image_files(files, size=self.size, channels=self.channels, crop=crop, workers=self.workers)


class ImageFolder(DatasetAdapter):
    name = "image-folder"
    summary = "any folder tree of .png/.jpg images: an unlabelled public set (labels -1), resized to a square"
    layout = "a folder (any depth) of .png/.jpg/.jpeg/.bmp/.webp files"

    class Config(FolderOptions):
        limit: int | None = Field(None, ge=1, description="keep only the first `limit` images (sorted path order)")

    def files(self, folder: Path) -> list[Path] | None:
        """The image files of this dataset in ``folder`` (sorted), or ``None`` when there are none."""
        return list_images(folder) or None

    def load(self, root: str | None = None, **options) -> tuple[Tensor, Tensor]:  # noqa: ANN003
        cfg = self.options(options)
        files = locate(self.name, root, self.files, layout=self.layout, system=self.system_locations())
        if cfg.limit is not None:
            files = files[: cfg.limit]
        x = cfg.decode(files)
        return x, torch.full((len(x),), -1, dtype=torch.long)

    def system_locations(self) -> list[Path]:
        return []


@hookimpl
def invertkit_register_datasets(register) -> None:
    register(ImageFolder)
