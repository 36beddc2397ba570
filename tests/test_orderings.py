"""The papers' orderings of the white-box family, asserted on a CPU-sized run of the bundled digits preset.

Runs ``benchmarks/orderings.py``'s variants (each a bench cell through ``run_cell``: the code path of
``cli.py bench``) at 100 iterations, 10 reconstructions per identity, seeds 0 and 1, and checks the orderings
that this scale supports, with margins about a third of what was measured. Measured (seeds 0, 1, 2; mean
eval-model confidence in the identity / acc@1 / KNN distance; `python benchmarks/orderings.py --dataset digits
--iterations 100 --samples 10 --seeds 0,1,2`):

    gmi 0.707 / 0.767 / 2.98      gmi-ma 0.800 / 0.847 / 2.70     gmi-lom 0.706 / 0.760 / 2.68
    gmi-lomma (kl) 0.596 / 0.620 / 3.06                          gmi-lomma (kl+l2) 0.739 / 0.773 / 2.83

Each of these orderings held at every seed: MA over GMI (confidence +0.06 to +0.12), LOMMA with KL+L2
distillation over LOMMA with KL (+0.13 to +0.16), and LOM closer to the private data than GMI (KNN -0.27 to
-0.33). LOM's acc@1 ties GMI's at this scale (-0.007), so it is compared on KNN distance.

KEDMI >= GMI needs KEDMI's iterations (its Adam search of a latent distribution starts from N(0, I) and at 100
iterations trails GMI), so it runs at 600 (the papers: 1,500), seeds 0 and 1. Measured (`python
benchmarks/orderings.py --dataset digits --iterations 600 --samples 10 --seeds 0,1,2 --variants gmi,kedmi`):
gmi 0.753 / 0.807 / 2.84, kedmi 0.843 / 0.940 / 2.66 (acc@1 +0.133); at 1,500 iterations +0.127, each seed
KEDMI 0.96-0.98 against GMI 0.82-0.86.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import REPO


def _run(variants: list[str], iterations: int):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("orderings", REPO / "benchmarks" / "orderings.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["orderings"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.run_variants("digits", iterations=iterations, samples=10, seeds=[0, 1], variants=variants, progress=False)


@pytest.fixture(scope="module")
def table():  # noqa: ANN201
    return _run(["gmi", "gmi-lom", "gmi-ma", "gmi-lomma (kl)", "gmi-lomma (kl+l2)"], iterations=100)


def test_kedmi_beats_gmi_given_its_iterations() -> None:
    t = _run(["gmi", "kedmi"], iterations=600)
    kedmi, gmi = t["kedmi"], t["gmi"]
    assert kedmi["acc@1"] >= gmi["acc@1"] + 0.05, (kedmi, gmi)
    assert kedmi["eval_conf"] >= gmi["eval_conf"] + 0.03, (kedmi, gmi)


def test_model_augmentation_beats_gmi(table) -> None:  # noqa: ANN001
    ma, gmi = table["gmi-ma"], table["gmi"]
    assert ma["eval_conf"] >= gmi["eval_conf"] + 0.03, (ma, gmi)
    assert ma["acc@1"] >= gmi["acc@1"], (ma, gmi)


def test_kl_l2_distillation_beats_kl_in_lomma(table) -> None:  # noqa: ANN001
    l2, kl = table["gmi-lomma (kl+l2)"], table["gmi-lomma (kl)"]
    assert l2["eval_conf"] >= kl["eval_conf"] + 0.05, (l2, kl)
    assert l2["acc@1"] >= kl["acc@1"], (l2, kl)


def test_lom_reconstructs_closer_to_the_private_data_than_gmi(table) -> None:  # noqa: ANN001
    lom, gmi = table["gmi-lom"], table["gmi"]
    assert lom["knn_dist"] <= gmi["knn_dist"] - 0.1, (lom, gmi)
    assert lom["acc@1"] >= gmi["acc@1"] - 0.05, (lom, gmi)  # a tie at this scale (measured -0.007)
