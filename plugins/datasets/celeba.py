"""CelebA (Liu, Luo, Wang & Tang, ICCV 2015, https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html): 202,599 aligned
178x218 face images of 10,177 identities; the standard private set of the model-inversion literature.

Layout: ``img_align_celeba/`` (the aligned JPEGs; also ``Img/img_align_celeba/``, Kaggle's nested
``img_align_celeba/img_align_celeba/`` or ``img_align_celeba_png/``) and ``identity_CelebA.txt`` (lines
``000001.jpg 2880``; also under ``Anno/``), optionally ``list_eval_partition.txt`` (also under ``Eval/``).

Preprocessing, as GMI and KEDMI do it (https://github.com/SCccc21/Knowledge-Enriched-DMI, ``dataloader.py``:
``crop_size = 108``, ``offset_height = (218 - 108) // 2``, ``offset_width = (178 - 108) // 2``, then
``Resize((64, 64))``): the 108x108 crop at rows 55..162, columns 35..142 of the aligned image, resized to 64x64
(bilinear). KEDMI crops a float tensor and converts it back with ``ToPILImage``, which truncates some pixel
values by one level; this adapter crops the decoded image directly.

Loading is lazy — only the selected images are decoded (all of CelebA at 64x64 would be ~10 GB of floats):
``identities`` (identity ids), ``max_identities`` (the identities with the most images) or the KEDMI protocol.

The KEDMI-lineage protocol (KEDMI, https://arxiv.org/abs/2010.04092; used by Re-thinking MI, PLG-MI, ...):
1,000 private identities and 30,000 public images of *other* identities. Their split files cannot be shipped,
so :func:`celeba_kedmi_split` states it as a deterministic rule over ``identity_CelebA.txt`` and
:func:`split_sha256` fingerprints the result so that two users can check they hold the same split. With
``protocol = "kedmi"`` the private identities are re-labelled ``0..999`` (ascending identity id) and the public
images get label ``-1``; the ``celeba-kedmi`` dataset is this protocol with the paper's numbers.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.data import DatasetAdapter, center_box, load_image_files, locate
from invertkit.core.errors import DataNotFoundError, UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig

#: GMI/KEDMI: the 108x108 centre crop of the 178x218 aligned image
CROP = 108
KEDMI_PRIVATE = 1000
KEDMI_PUBLIC = 30000
#: salt of the public-image sample; changing it changes the split (and its SHA-256)
SPLIT_SALT = "invertkit/celeba-kedmi/v1"


@dataclass(frozen=True)
class CelebALayout:
    identity_file: Path
    image_dir: Path
    partition_file: Path | None


def _first(*cands: Path) -> Path | None:
    return next((c for c in cands if c.exists()), None)


def probe_celeba(folder: Path) -> CelebALayout | None:
    for base in (folder, folder / "celeba", folder / "CelebA"):
        ident = _first(base / "identity_CelebA.txt", base / "Anno" / "identity_CelebA.txt")
        if ident is None:
            continue
        images = _first(
            base / "img_align_celeba" / "img_align_celeba", base / "img_align_celeba",
            base / "Img" / "img_align_celeba", base / "img_align_celeba_png", base / "Img" / "img_align_celeba_png",
        )
        if images is None or not images.is_dir():
            raise DataNotFoundError(f"{base}: found {ident.name} but no img_align_celeba/ folder of aligned images")
        part = _first(base / "list_eval_partition.txt", base / "Eval" / "list_eval_partition.txt")
        return CelebALayout(ident, images, part)
    return None


def read_pairs(path: str | Path, what: str) -> list[tuple[str, int]]:
    """``(file, int)`` per line of an ``identity_CelebA.txt``-style file (``000001.jpg 2880``), sorted by file."""
    path = Path(path)
    out = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataNotFoundError(f"{path}: cannot be read ({exc})") from None
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataNotFoundError(f"{path}:{n}: expected '<image file> <{what}>', got {line.strip()!r}")
        out.append((parts[0], int(parts[1])))
    if not out:
        raise DataNotFoundError(f"{path}: no '<image file> <{what}>' lines")
    return sorted(out)


def celeba_kedmi_split(
    identity_file: str | Path, n_private: int = KEDMI_PRIVATE, n_public: int = KEDMI_PUBLIC
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The KEDMI-lineage CelebA split as a deterministic rule over ``identity_CelebA.txt``.

    Rule:

    1. count the images of each identity;
    2. private identities: the ``n_private`` identities with the most images, ties broken by the smaller
       identity id; returned in ascending identity id;
    3. public images: among the images of all *other* identities, the ``n_public`` whose
       ``SHA-256("invertkit/celeba-kedmi/v1:<file name>")`` (hex) is smallest — a seeded, platform-independent
       uniform sample; returned sorted by file name.

    Returns ``(private_ids, public_files)``; :func:`split_sha256` fingerprints them.
    """
    pairs = read_pairs(identity_file, "identity")
    counts = Counter(i for _, i in pairs)
    if n_private > len(counts):
        raise UsageError(f"{identity_file}: {len(counts)} identities, fewer than the {n_private} private ones asked for")
    ranked = sorted(counts, key=lambda i: (-counts[i], i))
    private = tuple(sorted(ranked[:n_private]))
    chosen = set(private)
    others = [f for f, i in pairs if i not in chosen]
    if n_public > len(others):
        raise UsageError(f"{identity_file}: {len(others)} images of non-private identities, fewer than {n_public}")
    keyed = sorted(others, key=lambda f: hashlib.sha256(f"{SPLIT_SALT}:{f}".encode()).hexdigest())
    return private, tuple(sorted(keyed[:n_public]))


def split_sha256(private_ids: tuple[int, ...] | list[int], public_files: tuple[str, ...] | list[str]) -> str:
    """SHA-256 (hex) of ``"private:" + comma-joined sorted ids + "\\npublic:" + newline-joined sorted files``."""
    text = "private:" + ",".join(str(i) for i in sorted(private_ids)) + "\npublic:" + "\n".join(sorted(public_files))
    return hashlib.sha256(text.encode()).hexdigest()


def _image_path(image_dir: Path, name: str) -> Path:
    p = image_dir / name
    if p.is_file():
        return p
    png = image_dir / (Path(name).stem + ".png")
    if png.is_file():
        return png
    raise DataNotFoundError(f"{image_dir}: image {name} (listed in identity_CelebA.txt) is missing")


class CelebA(DatasetAdapter):
    name = "celeba"
    #: the folder name under $INVERTKIT_DATA
    data_name = "celeba"
    summary = "CelebA aligned faces, labels = identity ids; GMI/KEDMI 108x108 centre crop resized to 64x64, lazy"
    paper = "https://arxiv.org/abs/1411.7766"
    layout = ("img_align_celeba/*.jpg and identity_CelebA.txt (optionally list_eval_partition.txt), "
              "or the official Img/ Anno/ Eval/ folders")

    class Config(ComponentConfig):
        protocol: Literal["identities", "kedmi"] = Field(
            "identities", description="'identities': labels are CelebA identity ids; 'kedmi': n_private identities "
            "labelled 0.. (ascending id) + n_public images of other identities labelled -1 (celeba_kedmi_split)")
        identities: list[int] | None = Field(None, description="identity ids to load (protocol 'identities')")
        max_identities: int | None = Field(None, ge=1, description="load only the identities with the most images "
                                           "(ties: smaller id) (protocol 'identities')")
        partition: Literal[0, 1, 2] | None = Field(None, description="keep only this list_eval_partition.txt part "
                                                   "(0 train, 1 valid, 2 test); protocol 'identities'")
        n_private: int = Field(KEDMI_PRIVATE, ge=1, description="protocol 'kedmi': private identities (KEDMI: 1000)")
        n_public: int = Field(KEDMI_PUBLIC, ge=1, description="protocol 'kedmi': public images (KEDMI: 30000)")
        split_sha256: str | None = Field(None, description="protocol 'kedmi': the expected split_sha256(); a "
                                         "different split is an error")
        size: int = Field(64, ge=4, le=1024, description="output side in pixels (GMI/KEDMI: 64)")
        crop: int = Field(CROP, ge=0, description="centre crop side in the aligned image before resizing "
                          "(GMI/KEDMI: 108; 0: no crop)")
        workers: int | None = Field(None, ge=1, description="decoding threads (default: up to 8)")

    def load(self, root: str | None = None, **options) -> tuple[Tensor, Tensor]:  # noqa: ANN003
        cfg = self.options(options)
        lay = locate(self.data_name, root, probe_celeba, layout=self.layout,
                     hint="Get it from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html")
        if cfg.protocol == "kedmi":
            files, labels = self._kedmi(lay, cfg)
        else:
            files, labels = self._identities(lay, cfg)
        paths = [_image_path(lay.image_dir, f) for f in files]
        side = cfg.crop

        def crop(w: int, h: int):  # noqa: ANN202
            if side <= 0 or side > min(w, h):
                return None
            return center_box(w, h, side, side)

        x = load_image_files(paths, size=cfg.size, crop=crop, workers=cfg.workers)
        return x, torch.tensor(labels, dtype=torch.long)

    @staticmethod
    def _identities(lay: CelebALayout, cfg) -> tuple[list[str], list[int]]:  # noqa: ANN001
        pairs = read_pairs(lay.identity_file, "identity")
        if cfg.partition is not None:
            if lay.partition_file is None:
                raise DataNotFoundError(f"{lay.identity_file.parent}: partition={cfg.partition} needs "
                                        "list_eval_partition.txt, which is not there")
            part = dict(read_pairs(lay.partition_file, "partition"))
            pairs = [(f, i) for f, i in pairs if part.get(f) == cfg.partition]
        if cfg.identities is not None:
            want = set(cfg.identities)
            missing = want - {i for _, i in pairs}
            if missing:
                raise UsageError(f"celeba identities not found in {lay.identity_file.name}: {sorted(missing)[:10]}")
            pairs = [(f, i) for f, i in pairs if i in want]
        if cfg.max_identities is not None:
            counts = Counter(i for _, i in pairs)
            keep = set(sorted(counts, key=lambda i: (-counts[i], i))[: cfg.max_identities])
            pairs = [(f, i) for f, i in pairs if i in keep]
        return [f for f, _ in pairs], [i for _, i in pairs]

    @staticmethod
    def _kedmi(lay: CelebALayout, cfg) -> tuple[list[str], list[int]]:  # noqa: ANN001
        private, public = celeba_kedmi_split(lay.identity_file, cfg.n_private, cfg.n_public)
        if cfg.split_sha256 is not None:
            got = split_sha256(private, public)
            if got != cfg.split_sha256.lower():
                raise DataNotFoundError(f"{lay.identity_file}: the KEDMI split of this copy has SHA-256 {got}, the "
                                        f"preset expects {cfg.split_sha256}; a different identity_CelebA.txt?")
        index = {ident: k for k, ident in enumerate(private)}
        pairs = read_pairs(lay.identity_file, "identity")
        priv = [(f, index[i]) for f, i in pairs if i in index]
        pub = [(f, -1) for f in public]
        return [f for f, _ in priv + pub], [lab for _, lab in priv + pub]


class CelebAKEDMI(CelebA):
    name = "celeba-kedmi"
    summary = "CelebA, KEDMI protocol: 1,000 private identities (labels 0..999) + 30,000 public images (label -1)"
    paper = "https://arxiv.org/abs/2010.04092"

    class Config(CelebA.Config):
        protocol: Literal["kedmi"] = Field("kedmi", description="always 'kedmi' (use dataset 'celeba' for others)")


@hookimpl
def invertkit_register_datasets(register) -> None:
    register(CelebA)
    register(CelebAKEDMI)
