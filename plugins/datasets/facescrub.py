"""FaceScrub (Ng & Winkler, ICIP 2014, http://vintage.winklerbros.net/facescrub.html): 530 celebrities (265
actors, 265 actresses), ~100k face crops; a folder per identity.

Layout, as the model-inversion repositories keep it (e.g. Plug & Play Attacks,
https://github.com/LukasStruppek/Plug-and-Play-Attacks, ``datasets/facescrub.py``): the cropped faces written by
the official download script, ``<root>/actors/faces/<Name>/<file>.jpeg`` and
``<root>/actresses/faces/<Name>/<file>.jpeg``. Also accepted: ``<root>/{actors,actresses}/<Name>/...`` and a plain
``<root>/<Name>/...``. Labels are identity indices: the actors' folders in sorted order first, then the
actresses' (PPA's concatenation order), so a label does not depend on which identities are loaded.

Preprocessing: resize to ``size`` (64 as in PPA/KEDMI); ``crop_fraction = 54/64`` reproduces PPA's and KEDMI's
centre crop (54 of 64 pixels) before the final resize. Loading is lazy: only the selected identities' files are
decoded (``identities`` = label indices, or ``max_identities`` = the identities with the most images).
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.data import DatasetAdapter, center_box, list_images, load_image_files, locate
from invertkit.core.errors import UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig

GROUPS = ("actors", "actresses")


def identity_folders(folder: Path) -> list[tuple[str, Path]] | None:
    """``(name, folder)`` per identity, in label order, or ``None`` when ``folder`` holds no FaceScrub layout."""
    groups = []
    for g in GROUPS:
        for d in (folder / g / "faces", folder / g):
            if d.is_dir() and any(p.is_dir() for p in d.iterdir()):
                groups.append(d)
                break
    if not groups:
        groups = [folder]
    out = []
    for g in groups:
        for d in sorted((p for p in g.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name):
            if d.name in ("faces", "images") and g == folder:
                continue
            out.append((d.name, d))
    return out or None


class FaceScrub(DatasetAdapter):
    name = "facescrub"
    summary = "FaceScrub face crops, a folder per identity (530 identities); resized to 64x64"
    paper = "https://doi.org/10.1109/ICIP.2014.7025068"
    layout = "actors/faces/<Name>/*.jpeg and actresses/faces/<Name>/*.jpeg (a folder per identity)"

    class Config(ComponentConfig):
        size: int = Field(64, ge=4, le=1024, description="output side in pixels")
        crop_fraction: float = Field(1.0, gt=0, le=1, description="centre crop side as a fraction of the image side, "
                                     "before the resize to `size` (PPA/KEDMI: 54/64; 1: no crop)")
        identities: list[int] | None = Field(None, description="label indices to load (default: all)")
        max_identities: int | None = Field(None, ge=1, description="load only the identities with the most images "
                                           "(ties: lower label first)")
        workers: int | None = Field(None, ge=1, description="decoding threads (default: up to 8)")

    def load(self, root: str | None = None, **options) -> tuple[Tensor, Tensor]:  # noqa: ANN003
        cfg = self.options(options)
        ids = locate(self.name, root, identity_folders, layout=self.layout)
        files = [list_images(d) for _, d in ids]
        chosen = list(range(len(ids)))
        if cfg.identities is not None:
            bad = [i for i in cfg.identities if not 0 <= i < len(ids)]
            if bad:
                raise UsageError(f"facescrub identities {bad} out of range: {len(ids)} identities found")
            chosen = sorted(set(cfg.identities))
        if cfg.max_identities is not None:
            chosen = sorted(sorted(chosen, key=lambda i: (-len(files[i]), i))[: cfg.max_identities])
        paths, labels = [], []
        for i in chosen:
            paths += files[i]
            labels += [i] * len(files[i])
        s, frac = cfg.size, cfg.crop_fraction

        def crop(w: int, h: int):  # noqa: ANN202 - PPA resizes to 64, crops 54, resizes: the same region
            if frac >= 1.0:
                return None
            return center_box(w, h, max(1, round(w * frac)), max(1, round(h * frac)))

        x = load_image_files(paths, size=s, crop=crop, workers=cfg.workers)
        return x, torch.tensor(labels, dtype=torch.long)


@hookimpl
def invertkit_register_datasets(register) -> None:
    register(FaceScrub)
