"""Issue 11: the GAN-search family from one table, prior features as requirement sets (refused by ``check``,
skipped by the plan, with the same reason), and the kornia augmentations of core/augment.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings, strategies as st

from invertkit.core.augment import plg_augment, random_resized_crop, random_shift, resized_crop_boxes
from invertkit.core.errors import CapabilityError
from invertkit.core.interfaces import TorchTarget
from invertkit.core.interfaces.attack import Attack, prior_shortfall
from invertkit.core.interfaces.capability import Capability as C, PriorFeature, missing
from invertkit.core.interfaces.prior import PriorBuilder, features_of
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.testing.contracts import TinyPrior
from invertkit.plugins.attacks import gan_search
from invertkit.plugins.attacks.identity_terms import TERMS

FEATURES = list(PriorFeature)


# ------------------------------------------------------------------------------------------ the family
def test_the_family_is_one_table_of_seven_registered_attacks() -> None:
    names = {cls.name for cls in gan_search.FAMILY.values()}
    assert names == {"gmi", "kedmi", "gmi-lom", "kedmi-lom", "gmi-ma", "gmi-lomma", "kedmi-lomma"}
    seen: list[Any] = []
    gan_search.invertkit_register_attacks(register=seen.append)
    assert set(seen) == set(gan_search.FAMILY.values())
    for (search, term), cls in gan_search.FAMILY.items():
        assert issubclass(cls, Attack) and cls.search == search and cls.term is TERMS[term]
        assert cls.requires == frozenset({C.GRAD}) | TERMS[term].requires
        assert cls.paper.startswith("https://arxiv.org/abs/") and cls.summary and cls.__doc__
        assert cls.Config().iterations == 2400  # the official recovery scripts and LOMMA's configs


def test_a_variant_whose_config_lacks_its_term_options_is_refused() -> None:
    with pytest.raises(TypeError, match="LOMOptions"):
        type("Broken", (gan_search.GANSearchAttack,),
             {"name": "broken", "search": "gmi", "term": TERMS["lom"], "Config": gan_search.GMISearch})


# ------------------------------------------------------------------------------------------ prior features
class Needs(Attack):
    """An attack that needs whatever prior features a test gives it; its run is never reached."""

    name = "needs"
    requires = frozenset()

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        raise AssertionError("check must refuse first")


def prior_with(features: frozenset[PriorFeature]) -> TinyPrior:
    prior = TinyPrior()
    prior.conditional = PriorFeature.CONDITIONAL in features  # type: ignore[misc]
    prior.num_blocks = 2 if PriorFeature.LAYERED in features else 0
    prior.has_style_space = PriorFeature.STYLE_SPACE in features  # type: ignore[misc]
    prior.has_discriminator = PriorFeature.DISCRIMINATOR in features  # type: ignore[misc]
    return prior


@settings(max_examples=30, deadline=None)
@given(st.frozensets(st.sampled_from(FEATURES)), st.frozensets(st.sampled_from(FEATURES)))
def test_check_refuses_a_prior_lacking_a_feature_before_any_query(need, have) -> None:  # noqa: ANN001
    prior = prior_with(have)
    assert prior.features == features_of(prior) == have
    attack = type("NeedsThese", (Needs,), {"prior_requires": need})()
    target = TorchTarget(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)), num_classes=3,
                         input_shape=(1, 8, 8))
    lack = missing(need, have)
    if lack:
        with pytest.raises(CapabilityError) as info:
            attack(target, torch.tensor([0]), prior=prior)
        message = str(info.value)
        assert "\n" not in message and all(f.value in message for f in lack)
        assert message == f"attack 'needs' {prior_shortfall(type(attack), have, prior.name)}"
        assert target.queries == 0
    else:
        assert prior_shortfall(type(attack), have, prior.name) == ""


@given(st.booleans(), st.booleans(), st.frozensets(st.sampled_from([PriorFeature.DISCRIMINATOR, PriorFeature.STYLE_SPACE])))
def test_a_builder_declares_its_features(conditional, layered, provides) -> None:  # noqa: ANN001
    builder = type("B", (PriorBuilder,), {"name": "b", "conditional": conditional, "layered": layered,
                                          "provides": provides, "networks": None, "train": None, "wrap": None})
    expected = set(provides) | ({PriorFeature.CONDITIONAL} if conditional else set()) | (
        {PriorFeature.LAYERED} if layered else set())
    assert builder.features == frozenset(expected)


@pytest.mark.parametrize(("attack", "prior", "feature"), [("plg-mi", "wgan-gp", "conditional"),
                                                          ("if-gmi", "autoencoder", "layered")])
def test_the_plan_skips_an_attack_whose_prior_lacks_a_feature_with_the_reason(attack, prior, feature, plugins) -> None:  # noqa: ANN001
    from invertkit.core.bench.plan import skip_reason
    from invertkit.core.catalog import load_catalog
    from pathlib import Path
    import tempfile

    text = f'''
[presets.p]
dataset = "digits"
private_classes = [0, 1, 2, 3, 4]
public_classes = [5, 6, 7, 8, 9]
target = {{ arch = "small-cnn", epochs = 1 }}
eval = {{ arch = "small-mlp", epochs = 1 }}
prior = {{ plugin = "{prior}" }}
[targets.t]
preset = "p"
[bench.m]
attacks = ["{attack}"]
targets = ["t"]
'''
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "registry.toml"
        path.write_text(text)
        catalog = load_catalog(path)
    a_cls = plugins.get("attack", attack)
    defense = plugins.get("defense", "none")({})
    reason = skip_reason(catalog, plugins, a_cls, defense, "t", frozenset(C))
    prior_cls = plugins.get("prior", prior)
    assert reason == prior_shortfall(a_cls, prior_cls.features, prior, target="t")
    assert reason.startswith(f"needs a prior with {{{feature}}}") and f"'t' uses prior '{prior}'" in reason


# ------------------------------------------------------------------------------------------ augmentations
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.05, 1.0), st.floats(0.05, 1.0), st.floats(0.5, 1.0), st.floats(1.0, 2.0))
def test_crop_boxes_keep_the_scale_and_ratio_range_inside_the_image(seed, a, b, r_lo, r_span) -> None:  # noqa: ANN001
    lo, hi = sorted((a, b))
    ratio = (r_lo, r_lo * r_span)
    boxes = resized_crop_boxes(200, torch.Generator().manual_seed(seed), (lo, hi), ratio).double()
    x0, y0, w, h = boxes.unbind(1)
    assert float(x0.min()) >= -1e-6 and float(y0.min()) >= -1e-6
    assert float((x0 + w).max()) <= 1 + 1e-5 and float((y0 + h).max()) <= 1 + 1e-5
    drawn = torch.maximum(w, h) < 1 - 1e-6  # torchvision's fallback (no draw fitted) spans a whole side
    if not bool(drawn.any()):
        return
    area, r = (w * h)[drawn], (w / h)[drawn]
    assert float(area.min()) >= lo - 1e-4 and float(area.max()) <= hi + 1e-4
    assert float(r.min()) >= ratio[0] * (1 - 1e-4) and float(r.max()) <= ratio[1] * (1 + 1e-4)


@pytest.mark.parametrize("fn", [lambda x, g: random_resized_crop(x, g, (0.5, 0.9), (0.8, 1.2), 0.5),
                                plg_augment, random_shift])
def test_augmentations_are_seeded_and_keep_the_shape(fn) -> None:  # noqa: ANN001
    x = torch.rand((5, 3, 12, 10))
    a, b = fn(x, torch.Generator().manual_seed(7)), fn(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.equal(fn(x, torch.Generator().manual_seed(8)), a)


def test_official_defaults_and_identity_when_off() -> None:
    x = torch.rand((4, 1, 8, 8))
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(random_resized_crop(x, g, (1.0, 1.0), (1.0, 1.0), 0.0), x, atol=1e-5)
    assert torch.allclose(plg_augment(x, g, scale=(1.0, 1.0), brightness=0.0, contrast=0.0, flip=0.0, degrees=0.0),
                          x, atol=1e-5)
    assert torch.equal(random_shift(x, g, 0), x)
    shifted = random_shift(x, g, 1)
    assert any(torch.equal(shifted[0, :, 1:-1, 1:-1], x[0, :, 1 + dy:7 + dy, 1 + dx:7 + dx])
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))
