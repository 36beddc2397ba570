"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, https://arxiv.org/abs/1708.07747): 70,000 28x28 grey images of
10 clothing classes (0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker,
8 Bag, 9 Ankle boot), in MNIST's IDX format.

Read from the preset's ``root``, else ``$INVERTKIT_DATA/fashion-mnist``, else Debian's ``dataset-fashion-mnist``
package (``apt install dataset-fashion-mnist``: gzipped IDX files in ``/usr/share/datasets/fashion-mnist/``).
Train (60,000) and t10k (10,000) are concatenated, train first.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from invertkit.core.data import DEBIAN_DATASETS, DatasetAdapter, idx_split_files, load_idx_pairs, locate
from invertkit.core.hookspecs import hookimpl


def _probe(folder: Path):  # noqa: ANN201
    for d in (folder, folder / "raw", folder / "FashionMNIST" / "raw"):
        if d.is_dir():
            pairs = idx_split_files(d)
            if pairs:
                return pairs
    return None


class FashionMNIST(DatasetAdapter):
    name = "fashion-mnist"
    summary = "Fashion-MNIST 28x28 grey clothing images, 10 classes, 70,000 (IDX; Debian dataset-fashion-mnist)"
    paper = "https://arxiv.org/abs/1708.07747"
    layout = ("IDX files train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
              "t10k-labels-idx1-ubyte[.gz] in the folder")

    def load(self, root: str | None = None) -> tuple[Tensor, Tensor]:
        pairs = locate(self.name, root, _probe, layout=self.layout, system=[DEBIAN_DATASETS / "fashion-mnist"],
                       hint="On Debian/Ubuntu: apt install dataset-fashion-mnist")
        return load_idx_pairs(pairs)


@hookimpl
def invertkit_register_datasets(register) -> None:
    register(FashionMNIST)
