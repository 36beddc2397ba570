"""FFHQ, Flickr-Faces-HQ (Karras, Laine & Aila, CVPR 2019, https://arxiv.org/abs/1812.04948;
https://github.com/NVlabs/ffhq-dataset): 70,000 aligned faces, no identity labels — the public set of the
cross-dataset model-inversion protocols (CelebA or FaceScrub private, FFHQ public; KEDMI, PPA).

Layout: the official ``thumbnails128x128/`` (preferred when present: cheaper to decode) or
``images1024x1024/`` (PNG files in ``00000/ .. 69000/`` subfolders); any other folder tree of images under the
root is read as is. Preprocessing follows KEDMI's FFHQ loader (https://github.com/SCccc21/Knowledge-Enriched-DMI,
``dataloader.py``): the centre 88x88 crop of the 128x128 thumbnail (``crop_fraction = 88/128`` of any
resolution), resized to 64x64. Labels are all ``-1``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from invertkit.core.data import list_images
from invertkit.core.hookspecs import hookimpl
from invertkit.plugins.datasets.image_folder import ImageFolder

KEDMI_CROP = 88 / 128


class FFHQ(ImageFolder):
    name = "ffhq"
    summary = "FFHQ faces (unlabelled public set, labels -1): KEDMI's centre crop, resized to 64x64"
    paper = "https://arxiv.org/abs/1812.04948"
    layout = "thumbnails128x128/ or images1024x1024/ (PNG files in numbered subfolders), or any folder of face images"

    class Config(ImageFolder.Config):
        crop_fraction: float = Field(KEDMI_CROP, gt=0, le=1, description="centre crop side as a fraction of the "
                                     "image side before resizing (KEDMI: 88/128)")

    def files(self, folder: Path) -> list[Path] | None:
        for sub in ("thumbnails128x128", "images1024x1024"):
            if (folder / sub).is_dir():
                found = list_images(folder / sub)
                if found:
                    return found
        return list_images(folder) or None


@hookimpl
def invertkit_register_datasets(register) -> None:
    register(FFHQ)
