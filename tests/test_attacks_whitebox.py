"""The white-box GAN-prior attacks (kedmi, gmi-lom, kedmi-lom, gmi-ma, gmi-lomma, kedmi-lomma, plg-mi) and the
shared identity losses (core/losses.py): the attack contract for each, the losses against hand-computed values,
refusals, determinism, and quality on the tiny digits scenario (white-box TorchTarget, 5 identities, 1x8x8)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from invertkit.core import losses
from invertkit.core.errors import CapabilityError, ShapeError, UsageError
from invertkit.core.interfaces import Restricted, TorchTarget
from invertkit.core.interfaces.attack import Attack, AttackContext
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.prior import Prior
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.testing.contracts import AttackContract, TinyPrior, torch_threads
from invertkit.core.augment import plg_augment
from invertkit.plugins.attacks.gan_search import GMILOM, GMILOMMA, GMIMA, KEDMI, KEDMILOM, KEDMILOMMA
from invertkit.plugins.attacks.plg_mi import PLGMI
from invertkit.plugins.attacks.random_prior import RandomPrior

PRIORS_REGISTRY = Path(__file__).parent / "data" / "registry-priors.toml"




# ------------------------------------------------------------------------------------------- test priors
class ConditionalTinyPrior(TinyPrior):
    """A conditional test prior: the tiny linear decoder of ``z + shift[label]`` (a fixed random shift per class)."""

    name = "conditional-tiny-prior"
    conditional = True

    def __init__(self, image_shape=(1, 8, 8), latent_dim: int = 8, seed: int = 0, classes: int = 5) -> None:  # noqa: ANN001
        super().__init__(image_shape, latent_dim, seed)
        self.shift = torch.randn((classes, latent_dim), generator=torch.Generator().manual_seed(seed + 1))

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if labels is None:
            raise UsageError("a conditional prior needs labels")
        return super().decode(z + self.shift[labels.long()])


class ConditionalOver(Prior):
    """The tiny scenario's (unconditional) wgan-gp decoder made conditional by a fixed per-class latent shift."""

    name = "conditional-wgan"
    conditional = True

    def __init__(self, inner: Prior, classes: int = 5) -> None:
        self.inner = inner
        self.latent_shape, self.image_shape = inner.latent_shape, inner.image_shape
        self.shift = 0.5 * torch.randn((classes, *inner.latent_shape), generator=torch.Generator().manual_seed(7))

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.inner.decode(z + self.shift[labels.long()].to(z.device))


def public_context(n: int = 32, seed: int = 0) -> AttackContext:
    return AttackContext(public_images=torch.rand((n, 1, 8, 8), generator=torch.Generator().manual_seed(seed)))


# ----------------------------------------------------------------------------------------- contracts
MA_FAST = {"ma_archs": ["small-mlp"], "distill_epochs": 1}


class _WithPublic(AttackContract):
    def make_attack(self) -> Attack:
        return self.attack_cls(dict(self.config), context=public_context())


class TestKEDMIContract(AttackContract):
    attack_cls = KEDMI
    config: ClassVar[dict[str, Any]] = {"iterations": 4}


class TestGMILOMContract(_WithPublic):
    attack_cls = GMILOM
    config: ClassVar[dict[str, Any]] = {"iterations": 4, "p_reg": "sampled"}


class TestKEDMILOMContract(_WithPublic):
    attack_cls = KEDMILOM
    config: ClassVar[dict[str, Any]] = {"iterations": 4}


class TestGMIMAContract(_WithPublic):
    attack_cls = GMIMA
    config: ClassVar[dict[str, Any]] = {"iterations": 3, **MA_FAST}


class TestGMILOMMAContract(_WithPublic):
    attack_cls = GMILOMMA
    config: ClassVar[dict[str, Any]] = {"iterations": 3, **MA_FAST}


class TestKEDMILOMMAContract(_WithPublic):
    attack_cls = KEDMILOMMA
    config: ClassVar[dict[str, Any]] = {"iterations": 3, **MA_FAST}


class TestPLGMIContract(AttackContract):
    attack_cls = PLGMI
    config: ClassVar[dict[str, Any]] = {"iterations": 4}

    def make_prior(self) -> Prior:
        return ConditionalTinyPrior(image_shape=self.input_shape, latent_dim=8, seed=0, classes=self.num_classes)


# ------------------------------------------------------------------------------------------- losses
def test_identity_losses_match_hand_computed_values() -> None:
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.5, 3.0, 0.0]])
    y = torch.tensor([0, 2])
    # CE: log(e^2 + e^1 + e^-1) - 2 and log(e^0.5 + e^3 + 1) - 0
    ce = [math.log(math.e**2 + math.e + math.e**-1) - 2.0, math.log(math.e**0.5 + math.e**3 + 1.0)]
    assert torch.allclose(losses.cross_entropy(logits, y), torch.tensor(ce), atol=1e-6)
    assert torch.equal(losses.logit_loss(logits, y), torch.tensor([-2.0, -0.0]))
    # margin: best other minus own: 1 - 2 = -1 ; 3 - 0 = 3
    assert torch.equal(losses.max_margin(logits, y), torch.tensor([-1.0, 3.0]))
    # Poincare, first row: u = (2, 1, -1)/4, v = (1 - 1e-4, 0, 0)
    u, v = torch.tensor([0.5, 0.25, -0.25]), torch.tensor([1 - 1e-4, 0.0, 0.0])
    d = 2 * float(((u - v) ** 2).sum()) / ((1 - float((u**2).sum())) * (1 - float((v**2).sum())))
    assert math.isclose(float(losses.poincare(logits, y)[0]), math.acosh(1 + d), rel_tol=1e-4)
    # the Poincare loss ranks the right class's logit: raising it lowers the loss
    better = logits.clone()
    better[0, 0] = 4.0
    assert float(losses.poincare(better, y)[0]) < float(losses.poincare(logits, y)[0])
    feats = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    p = torch.tensor([1.0, 0.0, 3.0, 0.0])
    assert torch.equal(losses.feature_regulariser(feats, p), torch.tensor([(4.0 + 16.0) / 4, (1.0 + 9.0) / 4]))
    per_sample = torch.stack([p, torch.zeros(4)])
    assert torch.equal(losses.feature_regulariser(feats, per_sample), torch.tensor([5.0, 0.0]))
    with pytest.raises(ShapeError):
        losses.max_margin(logits, torch.tensor([0]))
    with pytest.raises(ShapeError):
        losses.feature_regulariser(feats, torch.zeros(3))


def test_plg_augment_is_differentiable_in_range_and_identity_without_randomness() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand((6, 1, 8, 8), requires_grad=True)
    out = plg_augment(x, g)
    assert out.shape == x.shape and float(out.detach().min()) >= 0 and float(out.detach().max()) <= 1
    assert not torch.allclose(out.detach(), x.detach(), atol=1e-3)
    out.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    same = plg_augment(x.detach(), g, scale=(1.0, 1.0), brightness=0.0, contrast=0.0, flip=0.0, degrees=0.0)
    assert torch.allclose(same, x.detach(), atol=1e-5)
    flipped = plg_augment(x.detach(), g, scale=(1.0, 1.0), brightness=0.0, contrast=0.0, flip=1.0, degrees=0.0)
    assert torch.allclose(flipped, x.detach().flip(-1), atol=1e-5)


# ------------------------------------------------------------------------------------------- helpers
def white_box(scenario) -> TorchTarget:  # noqa: ANN001
    return TorchTarget(scenario.target_net, num_classes=5, input_shape=(1, 8, 8), name="tiny-cnn")


def identities(samples: int) -> Tensor:
    return torch.arange(5).repeat_interleave(samples)


def scenario_context(scenario, plugins, cache=None) -> AttackContext:  # noqa: ANN001
    """The attacker's context: public data and plugins (never the scenario), and optionally the bench's cache."""
    return AttackContext(public_images=scenario.split.public[0], public_labels=scenario.split.public[1],
                         plugins=plugins, cache=cache)


def target_margin(scenario, images: Tensor, labels: Tensor) -> Tensor:  # noqa: ANN001
    with torch.no_grad():
        return losses.max_margin(scenario.target_net(images), labels)


# -------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("cls", [GMILOM, KEDMILOM, GMILOMMA, KEDMILOMMA])
@pytest.mark.parametrize("missing", [C.FEATURES, C.LOGITS])
def test_lom_attacks_refuse_a_target_without_features_or_logits(scenario, cls, missing) -> None:  # noqa: ANN001
    inner = white_box(scenario)
    target = Restricted(inner, inner.capabilities - {missing})
    with pytest.raises(CapabilityError, match=missing.value):
        cls({"iterations": 2}, context=scenario_context(scenario, None))(target, identities(1), prior=scenario.prior, seed=0)
    assert target.queries == 0


@pytest.mark.parametrize("cls", [GMILOM, KEDMILOM, GMIMA, GMILOMMA, KEDMILOMMA])
def test_attacks_needing_public_data_say_so(scenario, cls) -> None:  # noqa: ANN001
    target = white_box(scenario)
    with pytest.raises(UsageError, match="public images"):
        cls({"iterations": 2})(target, identities(1), prior=scenario.prior, seed=0)
    assert target.queries == 0


def test_plg_mi_refuses_an_unconditional_prior(scenario) -> None:  # noqa: ANN001
    target = white_box(scenario)
    with pytest.raises(CapabilityError, match=r"needs a prior with \{conditional\}"):
        PLGMI({"iterations": 2})(target, identities(1), prior=scenario.prior, seed=0)
    assert target.queries == 0
    with pytest.raises(CapabilityError, match="logits"):
        PLGMI({"iterations": 2})(Restricted(target, target.capabilities - {C.LOGITS}), identities(1),
                                 prior=ConditionalOver(scenario.prior), seed=0)


# ------------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize(
    "make",
    [lambda s: KEDMI({"iterations": 10}),
     lambda s: GMILOM({"iterations": 10, "p_reg": "sampled"}, context=scenario_context(s, None)),
     lambda s: PLGMI({"iterations": 10})],
    ids=["kedmi", "gmi-lom-sampled", "plg-mi"],
)
def test_seed_determines_the_images(scenario, make) -> None:  # noqa: ANN001
    prior = ConditionalOver(scenario.prior)  # unconditional attacks ignore the labels it is given

    def run(seed: int) -> AttackResult:
        return make(scenario)(white_box(scenario), identities(2), prior=prior if isinstance(make(scenario), PLGMI)
                              else scenario.prior, seed=seed)

    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a.images, b.images) and torch.equal(a.scores, b.scores)
    assert not torch.equal(a.images, c.images)


# ---------------------------------------------------------------------------------------------- KEDMI
def test_kedmi_learns_one_distribution_per_identity_and_samples_it(scenario) -> None:  # noqa: ANN001
    labels = identities(3)
    target = white_box(scenario)
    result = KEDMI({"iterations": 20, "samples_per_step": 2})(target, labels, prior=scenario.prior, seed=0)
    assert result.extras["identities"] == 5 and len(result) == 15
    # 20 steps x 5 identities x 2 samples: the reconstructions themselves cost no query
    assert result.queries == target.queries == 20 * 5 * 2
    # the rows of one identity are different samples of one distribution, scored by that distribution's loss
    imgs = result.images.view(5, 3, -1)
    assert float((imgs[:, 0] - imgs[:, 1]).abs().max()) > 1e-3
    assert torch.equal(result.scores.view(5, 3)[:, 0], result.scores.view(5, 3)[:, 2])
    assert result.latents is not None and float(result.latents.abs().max()) <= 1.0  # clamped samples


# -------------------------------------------------------------------------------------------- quality
# Measured on the tiny scenario (5 identities x 5 samples, seeds 0-3, eval-model acc@1, `python measure.py`
# in the report): random-prior 0.22 mean; at 60 iterations gmi 0.37, kedmi 0.21, gmi-lom 0.34, kedmi-lom 0.20,
# gmi-lomma 0.36, kedmi-lomma 0.13; at 150: gmi 0.39, kedmi 0.31, gmi-lom 0.37, kedmi-lom 0.32, gmi-ma 0.38,
# gmi-lomma 0.38, kedmi-lomma 0.24; kedmi at 300: 0.36. The papers' orderings (kedmi > gmi, lom > ce, ma > none)
# do NOT show at this scale: acc@1 saturates near 0.4 (the 8x8 wgan-gp prior, trained on the public digits 5-9,
# draws private digits 0-4 poorly, and the target calls 80% of its samples one class), so no ordering is
# asserted. What is asserted is that each attack moves the target towards the identity: the target's max-margin
# (best other logit minus the identity's) of the reconstructions against that of the prior's own samples at the
# same seed. Measured mean margin before -> after (seeds 0, 1, 2; 5 identities x 2):
#   kedmi 60 it.: 6.41/6.37/6.29 -> 5.63/5.33/5.93 ; at 150 it. (used here) -> 3.66/4.01/4.00
#   gmi-lom 60 it.: 6.41/6.37/6.29 -> 2.10/2.45/2.72
#   plg-mi 60 it. (wgan-gp made conditional by a per-class latent shift): 6.58/6.87/6.84 -> 0.00/-0.47/-1.34
DROPS = {"kedmi": 1.5, "gmi-lom": 3.0, "plg-mi": 5.0}


@pytest.mark.parametrize(
    ("name", "make", "conditional"),
    [("kedmi", lambda s: KEDMI({"iterations": 150}), False),
     ("gmi-lom", lambda s: GMILOM({"iterations": 60}, context=scenario_context(s, None)), False),
     ("plg-mi", lambda s: PLGMI({"iterations": 60}), True)],
    ids=["kedmi", "gmi-lom", "plg-mi"],
)
def test_attack_moves_the_target_towards_the_identity(scenario, name, make, conditional) -> None:  # noqa: ANN001
    labels = identities(2)
    prior = ConditionalOver(scenario.prior) if conditional else scenario.prior
    result = make(scenario)(white_box(scenario), labels, prior=prior, seed=0)
    start = RandomPrior()(white_box(scenario), labels, prior=prior, seed=0)
    after, before = target_margin(scenario, result.images, labels), target_margin(scenario, start.images, labels)
    assert float(after.mean()) < float(before.mean()) - DROPS[name], (name, float(before.mean()), float(after.mean()))


def test_ma_students_are_distilled_through_the_target_and_counted(scenario, plugins) -> None:  # noqa: ANN001
    from invertkit.core.interfaces.access import seal
    from invertkit.core.zoo.distill import augmented_models
    from invertkit.core.zoo.scenario import derived_cache

    cfg = {"iterations": 5, "distill_epochs": 2}
    public = len(scenario.split.public[0])
    target = white_box(scenario)
    ctx = scenario_context(scenario, plugins, cache=derived_cache(scenario, target, "none"))
    result = GMIMA(cfg, context=ctx)(target, identities(1), prior=scenario.prior, seed=0)
    assert result.extras["augmented_models"] == 2  # the default students for 8x8 images: small-cnn, small-mlp
    # each student asked the target once per public image (no augmentation: its answers never change)
    assert result.queries == target.queries == 5 * 5 + 2 * public
    # re-used from the cache, the students are paid for again
    cached = white_box(scenario)
    ctx = scenario_context(scenario, plugins, cache=derived_cache(scenario, cached, "none"))
    again = GMIMA(cfg, context=ctx)(cached, identities(1), prior=scenario.prior, seed=0)
    assert again.queries == result.queries and torch.allclose(again.images, result.images, atol=1e-6)
    students = augmented_models(seal(white_box(scenario)), scenario.split.public[0], plugins,
                                ["small-cnn", "small-mlp"], "kl", seed=0, epochs=2)
    # the same students given explicitly give the very same reconstructions
    given = AttackContext(extras={"augmented_models": students})
    again = GMIMA(cfg, context=given)(white_box(scenario), identities(1), prior=scenario.prior, seed=0)
    assert torch.allclose(again.images, result.images, atol=1e-6)
    # and they matter: without them (plain GMI's CE) the result differs
    from invertkit.plugins.attacks.gan_search import GMI

    plain = GMI({"iterations": 5})(white_box(scenario), identities(1), prior=scenario.prior, seed=0)
    assert not torch.allclose(plain.images, result.images, atol=1e-4)


def test_plg_mi_runs_on_the_plg_cgan_prior(plugins) -> None:  # noqa: ANN001
    from invertkit.core.catalog import load_catalog
    from invertkit.core.zoo.scenario import build_scenario

    from invertkit.core.zoo.scenario import prior_for

    with torch_threads(1):
        sc = build_scenario("digits-tiny-plg", load_catalog(PRIORS_REGISTRY), plugins)
        target = TorchTarget(sc.target_net, num_classes=5, input_shape=(1, 8, 8))
        prior, _ = prior_for(sc, plugins, target, "none")  # fitted to the target through its view, counted
    assert prior.conditional
    fitted = target.queries
    assert fitted > 0
    labels = identities(2)
    result = PLGMI({"iterations": 30})(target, labels, prior=prior, seed=0)
    assert result.queries == target.queries - fitted == 30 * 2 * len(labels)  # two augmented views per step
    start = RandomPrior()(target, labels, prior=prior, seed=0)
    assert float(target_margin(sc, result.images, labels).mean()) < float(target_margin(sc, start.images, labels).mean())
