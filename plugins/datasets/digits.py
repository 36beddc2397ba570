"""scikit-learn's bundled handwritten digits (UCI optdigits test set): 1,797 8x8 images, 10 classes.

Ships with scikit-learn, so it needs no download: the data of the embedded default scenario.
"""

from __future__ import annotations

import torch
from torch import Tensor

from invertkit.core.data import DatasetAdapter
from invertkit.core.hookspecs import hookimpl


class Digits(DatasetAdapter):
    name = "digits"
    summary = "sklearn load_digits: 1,797 grey 8x8 digits, 10 classes (bundled, no download)"
    paper = "https://archive.ics.uci.edu/dataset/80"
    layout = "bundled with scikit-learn"

    def load(self, root: str | None = None) -> tuple[Tensor, Tensor]:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(d.target, dtype=torch.long)
        return x, y


@hookimpl
def invertkit_register_datasets(register) -> None:
    register(Digits)
