"""A labelled folder-per-class dataset, the layout of torchvision's ``ImageFolder`` and of most in-house face
sets: ``<root>/<class>/<any depth>/*.png|jpg|...``. Labels are the class folders' indices in sorted name order
(so a label does not depend on which classes are loaded); hidden folders are skipped.

This is how a red-teamer brings their own images: as a preset's dataset (private and public identities from
one folder tree), or as a standalone target's labelled public or private data.

Options (``load(root, size=64, channels=3, crop_fraction=1.0, classes=None, per_class=None, workers=None)``)
are validated by :class:`ClassFolder.Config`; ``classes`` takes folder names or label indices.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.data import DatasetAdapter, list_images, locate
from invertkit.core.errors import UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.registry import unknown
from invertkit.plugins.datasets.image_folder import FolderOptions


def class_folders(folder: Path) -> list[tuple[str, list[Path]]] | None:
    """``(name, image files)`` per class sub-folder of ``folder``, sorted by name; ``None`` when ``folder``
    has no sub-folder with an image in it."""
    out = []
    for d in sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name):
        files = list_images(d)
        if files:
            out.append((d.name, files))
    return out or None


class ClassFolder(DatasetAdapter):
    name = "class-folder"
    summary = "a labelled folder per class (<root>/<class>/*.png|jpg), labels in sorted folder-name order"
    layout = "<root>/<class name>/<images> (one sub-folder per class or identity, any depth below it)"

    class Config(FolderOptions):
        classes: list[str | int] | None = Field(None, description="class folder names or label indices to load "
                                                "(default: all); labels stay the full tree's indices")
        per_class: int | None = Field(None, ge=1, description="keep only the first `per_class` images of each class")

    def class_names(self, root: str | None = None) -> list[str]:
        """The class folder names in label order."""
        return [n for n, _ in locate(self.name, root, class_folders, layout=self.layout)]

    def load(self, root: str | None = None, **options) -> tuple[Tensor, Tensor]:  # noqa: ANN003
        cfg = self.options(options)
        found = locate(self.name, root, class_folders, layout=self.layout)
        names = [n for n, _ in found]
        chosen = list(range(len(found)))
        if cfg.classes is not None:
            chosen = []
            for c in cfg.classes:
                if isinstance(c, int):
                    if not 0 <= c < len(found):
                        raise UsageError(f"class-folder: class index {c} out of range: {len(found)} classes found")
                    chosen.append(c)
                elif c in names:
                    chosen.append(names.index(c))
                else:
                    raise unknown("class folder", c, names)
            chosen = sorted(set(chosen))
        paths: list[Path] = []
        labels: list[int] = []
        for i in chosen:
            files = found[i][1][: cfg.per_class] if cfg.per_class else found[i][1]
            paths += files
            labels += [i] * len(files)
        x = cfg.decode(paths)
        return x, torch.tensor(labels, dtype=torch.long)


@hookimpl
def invertkit_register_datasets(register) -> None:  # noqa: ANN001
    register(ClassFolder)
