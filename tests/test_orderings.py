"""The papers' orderings of the white-box family, asserted on a CPU-sized run of the bundled digits preset.

Runs ``benchmarks/orderings.py``'s variants (each a bench cell through ``run_cell``: the code path of
``cli.py bench``) at 100 iterations, 10 reconstructions per identity, seeds 0 and 1, and checks the orderings
that this scale supports, with margins about a third of what was measured. MA's students are distilled as the
official recipe does (no augmentation), through the target's view (every public image they are shown is a
query). Measured (seeds 0, 1, 2; acc@1 / mean eval-model confidence in the identity / squared KNN distance;
`python benchmarks/orderings.py --dataset digits --iterations 100 --samples 10 --seeds 0,1,2`):

    gmi 0.767 / 0.704 / 9.95         gmi-lom 0.753 / 0.700 / 8.23
    gmi-ma 0.780 / 0.702 / 9.78      gmi-ma (shift aug) 0.840 / 0.793 / 8.19
    gmi-lomma (kl) 0.613 / 0.590 / 11.50                          gmi-lomma (kl+l2) 0.660 / 0.648 / 10.46

What held at every seed: LOM closer to the private data than GMI (KNN -0.9 to -2.2), LOMMA with KL+L2
distillation over LOMMA with KL (confidence +0.03 to +0.09). What no longer holds under the official recipe:
MA over GMI. With students distilled without augmentation, MA ties GMI (+0.013 acc@1, -0.002 confidence);
the +0.06..+0.12 measured before came from a random 1-pixel shift while distilling, which the official code
does not do (``distill_augment=True`` restores it: +0.07 acc@1, +0.09 confidence). So the test asserts that
MA does not fall below GMI, and that the augmented students beat it.

KEDMI >= GMI needs KEDMI's iterations (its Adam search of a latent distribution starts from N(0, I) and at 100
iterations trails GMI), so it runs at 600 (the official scripts: 2,400), seeds 0 and 1; its GAN is fitted to
the target through the attacker's view. Measured (`python benchmarks/orderings.py --dataset digits
--iterations 600 --samples 10 --seeds 0,1,2 --variants gmi,kedmi`): gmi 0.753 / 0.807, kedmi 0.843 / 0.940
(acc@1 +0.133).
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
    return _run(["gmi", "gmi-lom", "gmi-ma", "gmi-ma (shift aug)", "gmi-lomma (kl)", "gmi-lomma (kl+l2)"],
                iterations=100)


def test_kedmi_beats_gmi_given_its_iterations() -> None:
    t = _run(["gmi", "kedmi"], iterations=600)
    kedmi, gmi = t["kedmi"], t["gmi"]
    assert kedmi["acc@1"] >= gmi["acc@1"] + 0.05, (kedmi, gmi)
    assert kedmi["eval_conf"] >= gmi["eval_conf"] + 0.03, (kedmi, gmi)


def test_model_augmentation_does_not_fall_below_gmi(table) -> None:  # noqa: ANN001
    ma, gmi = table["gmi-ma"], table["gmi"]
    assert ma["acc@1"] >= gmi["acc@1"] - 0.05, (ma, gmi)  # a tie under the official recipe (measured +0.013)
    assert ma["eval_conf"] >= gmi["eval_conf"] - 0.05, (ma, gmi)


def test_model_augmentation_with_augmented_students_beats_gmi(table) -> None:  # noqa: ANN001
    ma, gmi = table["gmi-ma (shift aug)"], table["gmi"]
    assert ma["eval_conf"] >= gmi["eval_conf"] + 0.03, (ma, gmi)
    assert ma["acc@1"] >= gmi["acc@1"], (ma, gmi)


def test_kl_l2_distillation_beats_kl_in_lomma(table) -> None:  # noqa: ANN001
    l2, kl = table["gmi-lomma (kl+l2)"], table["gmi-lomma (kl)"]
    assert l2["eval_conf"] >= kl["eval_conf"] + 0.02, (l2, kl)
    assert l2["acc@1"] >= kl["acc@1"], (l2, kl)


def test_lom_reconstructs_closer_to_the_private_data_than_gmi(table) -> None:  # noqa: ANN001
    lom, gmi = table["gmi-lom"], table["gmi"]
    assert lom["knn_dist"] <= gmi["knn_dist"] - 0.3, (lom, gmi)  # squared distances: measured -1.7
    assert lom["acc@1"] >= gmi["acc@1"] - 0.05, (lom, gmi)  # a tie at this scale (measured -0.007)
