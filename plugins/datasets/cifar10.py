"""CIFAR-10 (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html), binary version: 60,000 32x32 colour
images, 10 classes.

Layout: ``cifar-10-batches-bin/data_batch_{1..5}.bin`` and ``test_batch.bin`` (the extracted
``cifar-10-binary.tar.gz``), in the root or in the root's ``cifar-10-batches-bin/``. Each file is 10,000 records of
1 label byte and 3,072 pixel bytes (1,024 red, then green, then blue, each 32x32 row-major). The five training
batches and the test batch are concatenated in that order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from invertkit.core.data import DatasetAdapter, locate
from invertkit.core.errors import DataNotFoundError
from invertkit.core.hookspecs import hookimpl

RECORD = 1 + 3 * 32 * 32
FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def _probe(folder: Path) -> list[Path] | None:
    for d in (folder, folder / "cifar-10-batches-bin"):
        found = [d / f for f in FILES if (d / f).is_file()]
        if found:
            if len(found) != len(FILES):
                missing = [f for f in FILES if not (d / f).is_file()]
                raise DataNotFoundError(f"{d}: CIFAR-10 binary batches incomplete, missing {', '.join(missing)}")
            return found
    return None


def read_batch(path: Path) -> tuple[Tensor, Tensor]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise DataNotFoundError(f"{path}: {raw.size} bytes is not a whole number of {RECORD}-byte CIFAR-10 records")
    rec = raw.reshape(-1, RECORD)
    labels = torch.from_numpy(rec[:, 0].astype(np.int64))
    if int(labels.max()) > 9:
        raise DataNotFoundError(f"{path}: label byte {int(labels.max())} > 9; not a CIFAR-10 binary batch")
    images = torch.from_numpy(rec[:, 1:].copy()).view(-1, 3, 32, 32)
    return images, labels


class CIFAR10(DatasetAdapter):
    name = "cifar10"
    summary = "CIFAR-10 binary version: 60,000 32x32 colour images, 10 classes"
    paper = "https://www.cs.toronto.edu/~kriz/learning-features-2009-TR.pdf"
    layout = "cifar-10-batches-bin/data_batch_{1..5}.bin and test_batch.bin (1 label byte + 3072 pixel bytes per record)"

    def load(self, root: str | None = None) -> tuple[Tensor, Tensor]:
        files = locate(self.name, root, _probe, layout=self.layout,
                       hint="Get cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it")
        parts = [read_batch(f) for f in files]
        x = torch.cat([p[0] for p in parts]).float().div_(255.0)
        return x, torch.cat([p[1] for p in parts])


@hookimpl
def invertkit_register_datasets(register) -> None:
    register(CIFAR10)
