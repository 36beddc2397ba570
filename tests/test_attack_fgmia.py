"""FGMIA (plugins/attacks/fgmia.py): the attack contract (FGMIA and its no-FG variant), TransF and ScaleFT
(properties), the ablation flags' conditions, exact query accounting (training, no-TransF's centres, selection,
the cached model paid for again) and quality on the tiny digits preset against the random prior."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import Tensor

from invertkit.core.errors import CapabilityError, ConfigError
from invertkit.core.interfaces import ACCESS_LEVELS, TorchTarget
from invertkit.core.interfaces.access import seal
from invertkit.core.interfaces.attack import Attack, AttackContext
from invertkit.core.interfaces.capability import Capability
from invertkit.core.testing.contracts import AttackContract
from invertkit.core.testing.strategies import make_tiny_target
from invertkit.core.zoo.arch import last_layer
from invertkit.plugins.attacks.fgmia import (
    FGMIA, FeatureConditionedEDM, FGMIANoFG, FGMIANoScaleFT, FGMIANoTransF, class_centres, scaleft, transf,
)
from invertkit.plugins.attacks.random_prior import RandomPrior

from conftest import attack_acc  # noqa: E402

#: toy size: a two-step EDM, two sampling steps
FAST: dict[str, Any] = {"train_steps": 2, "train_batch_size": 8, "width": 8, "channel_mult": [1], "layers_per_block": 1,
                        "attention": [], "dropout": 0.0, "lr_rampup_images": 0, "steps": 2, "batch_size": 16,
                        "centre_top_n": 3}
VARIANTS = (FGMIA, FGMIANoFG, FGMIANoTransF, FGMIANoScaleFT)


def public(n: int = 24, shape: tuple[int, ...] = (1, 8, 8)) -> Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(0))


class TestFGMIAContract(AttackContract):
    attack_cls = FGMIA
    config: ClassVar[dict[str, Any]] = FAST

    def make_attack(self) -> Attack:
        return self.attack_cls(dict(self.config), context=AttackContext(public_images=public()))


class TestFGMIANoFGContract(TestFGMIAContract):
    attack_cls = FGMIANoFG


# -------------------------------------------------------------------------------- TransF and ScaleFT
@settings(max_examples=40, deadline=None)
@given(dim=st.integers(2, 24), classes=st.integers(1, 6), rows=st.integers(2, 40), dead=st.integers(0, 3),
       norm=st.sampled_from([0.5, 1.0, 2.0]), seed=st.integers(0, 2**16))
def test_scaleft_puts_each_identity_at_the_statistics_of_real_features(dim: int, classes: int, rows: int, dead: int,
                                                                       norm: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    feats = torch.relu(torch.randn(rows, dim, generator=g) * 3 * torch.rand(dim, generator=g) + 0.5)
    feats[:, : min(dead, dim - 1)] = 0.25  # dimensions that never vary
    weight = torch.randn(classes, dim, generator=g)
    mean, std = feats.mean(0), feats.std(0, unbiased=False)
    live = std > 0
    c = scaleft(transf(weight), mean, std, norm)
    assert c.shape == (classes, dim) and bool(torch.isfinite(c).all())
    # dimensions that never vary stay at their mean; on the others, the standardised squared norm of each
    # identity's feature is norm^2 times that of a real feature on average (D')
    assert torch.equal(c[:, ~live], mean[~live].expand(classes, -1))
    z = (c - mean)[:, live] / std[live]
    real = ((feats - mean)[:, live] / std[live]).pow(2).sum(1).mean()
    torch.testing.assert_close(z.pow(2).sum(1), (norm**2 * real).expand(classes), rtol=1e-3, atol=1e-3)
    # and it is the point at that norm with the largest logit of its class: no random point beats it
    for y in range(classes):
        other = torch.randn(64, int(live.sum()), generator=g)
        other = other / other.norm(dim=1, keepdim=True) * z[y].norm()
        x = mean.expand(64, -1).clone()
        x[:, live] = mean[live] + std[live] * other
        assert bool((x @ weight[y] <= c[y] @ weight[y] + 1e-3 * (1 + c[y].abs().sum())).all())


@settings(max_examples=20, deadline=None)
@given(classes=st.integers(2, 8), seed=st.integers(0, 1000), shape=st.sampled_from([(1, 8, 8), (3, 4, 4)]))
def test_transf_direction_is_the_weight_row(classes: int, seed: int, shape: tuple[int, int, int]) -> None:
    view = seal(make_tiny_target(seed, num_classes=classes, input_shape=shape))
    weight, bias = last_layer(view.module, classes)
    net = view.module
    assert torch.equal(weight, net.fc.weight) and torch.equal(bias, net.fc.bias)
    d = transf(weight)
    torch.testing.assert_close(torch.nn.functional.cosine_similarity(d, net.fc.weight, dim=1), torch.ones(classes))
    # the direction of identity y raises y's logit fastest: no other unit step from any feature raises it more
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(1, weight.shape[1], generator=g)
    step = d / d.norm(dim=1, keepdim=True)
    along = (net.head(f + step) - net.head(f)).diagonal()
    other = torch.randn(32, weight.shape[1], generator=g)
    other = other / other.norm(dim=1, keepdim=True)
    gains = net.head(f + other) - net.head(f)
    assert bool((gains <= along + 1e-5).all())


def test_last_layer_reads_a_head_method_and_refuses_a_target_without_weights() -> None:
    from invertkit.plugins.targets.mnist_nets import LeNet
    from invertkit.plugins.targets.small_nets import SmallCNN

    for net, layer in ((LeNet(5, (1, 28, 28)), "out"), (SmallCNN(5, (1, 8, 8)), "fc")):
        weight, _ = last_layer(net, 5)
        assert torch.equal(weight, getattr(net, layer).weight)
    black = make_tiny_target(0, capabilities=ACCESS_LEVELS["black-box"])
    with pytest.raises(CapabilityError):
        seal(black).module  # noqa: B018 - the view refuses the network without the weights capability
    with pytest.raises(CapabilityError):
        last_layer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5)), 5)


def test_ablation_flags_change_the_conditioning() -> None:
    images = public(40)
    target = make_tiny_target(3, num_classes=4)
    view = seal(target)
    feats = view.features(images)
    model = FeatureConditionedEDM(torch.nn.Identity(), feats.shape[1], 4)
    model.fit_statistics(feats)
    weight = view.module.fc.weight
    conds = {cls.name: cls(FAST, context=AttackContext(public_images=images)).identity_conditions(view, model, images)
             for cls in VARIANTS}
    torch.testing.assert_close(conds["fgmia"], scaleft(weight, feats.mean(0), feats.std(0, unbiased=False)))
    torch.testing.assert_close(conds["fgmia-noscaleft"], weight)
    probs = target.probs(images)
    torch.testing.assert_close(conds["fgmia-notransf"], class_centres(feats, probs, FAST["centre_top_n"]))
    assert torch.equal(conds["fgmia-nofg"], torch.eye(4))
    names = list(conds)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert conds[a].shape != conds[b].shape or not torch.allclose(conds[a], conds[b]), (a, b)
    with pytest.raises(ConfigError):
        FGMIA({"condition": "one-hot", "scaleft": False})


# -------------------------------------------------------------------------------- queries
FEATURES_PROBS = frozenset({Capability.FEATURES, Capability.PROBS})


@pytest.mark.parametrize(("cls", "options", "access", "expected"), [
    (FGMIA, {}, None, lambda n, k, t, rows: n),                                  # features of the public images
    (FGMIANoFG, {}, ACCESS_LEVELS["label-only"], lambda n, k, t, rows: n),       # their labels, through labels only
    (FGMIA, {"condition": "logits"}, None, lambda n, k, t, rows: n),             # their logits
    (FGMIANoTransF, {}, None, lambda n, k, t, rows: n + n + k * t),              # + probs, the centres' features
    (FGMIANoTransF, {}, FEATURES_PROBS, lambda n, k, t, rows: 1 + n + n + k * t),  # + the width, without weights
    (FGMIA, {"candidates": 3}, None, lambda n, k, t, rows: n + 3 * rows),        # + the draws' confidences
])
def test_queries_are_counted(cls, options, access, expected) -> None:  # noqa: ANN001
    n, k, rows = 24, 4, 6
    target = make_tiny_target(1, num_classes=k, capabilities=access)
    labels = torch.tensor([0, 1, 2, 3, 3, 0])
    result = cls({**FAST, **options}, context=AttackContext(public_images=public(n)))(target, labels, seed=0)
    assert result.queries == target.queries == expected(n, k, FAST["centre_top_n"], rows)
    assert result.images.shape == (rows, 1, 8, 8) and result.extras["condition"] in ("features", "logits", "one-hot")
    if options.get("candidates"):
        assert bool((result.scores > 0).all())


def test_a_budget_below_the_public_features_is_refused() -> None:
    from invertkit.core.errors import QueryBudgetExceeded

    target = make_tiny_target(1, num_classes=4, budget=23)
    with pytest.raises(QueryBudgetExceeded):
        FGMIA(FAST, context=AttackContext(public_images=public(24)))(target, torch.tensor([0]), seed=0)
    assert target.queries <= 23 and target.exhausted


def test_options_that_need_more_than_the_target_gives_are_refused_before_any_query() -> None:
    target = make_tiny_target(1, num_classes=4, capabilities=ACCESS_LEVELS["label-only"])
    for options in ({"candidates": 2}, {"condition": "logits"}):
        with pytest.raises(CapabilityError):
            FGMIANoFG({**FAST, **options}, context=AttackContext(public_images=public()))(target, torch.tensor([0]))
    assert target.queries == 0


def test_the_cached_model_is_reused_and_paid_for_again(scenario) -> None:  # noqa: ANN001
    from invertkit.core.zoo.model_cache import derived_cache

    images = scenario.split.public[0][:64]

    def run() -> tuple[Any, Any]:
        target = TorchTarget(scenario.target_net, num_classes=5, input_shape=(1, 8, 8), name="net")
        ctx = AttackContext(public_images=images, cache=derived_cache(scenario, target, "fgmia-test"))
        return FGMIA(FAST, context=ctx)(target, torch.arange(5), seed=0), target

    (first, t1), (second, t2) = run(), run()
    assert first.queries == t1.queries == second.queries == t2.queries == 64
    assert torch.equal(first.images, second.images)


# -------------------------------------------------------------------------------- quality (digits)
SAMPLES = 5  # reconstructions per identity

#: what fits a CPU test: a small EDM (the condition added to the time embedding, cheaper on a CPU than the
#: official cross-attention token), briefly trained on the tiny digits preset's 896 public images; 20 steps
QUALITY: dict[str, Any] = {"train_steps": 1000, "train_batch_size": 64, "width": 16, "channel_mult": [1, 2],
                           "layers_per_block": 1, "attention": [], "dropout": 0.0, "lr": 2e-3, "lr_rampup_images": 2000,
                           "cond_mode": "add", "steps": 20}


def test_fgmia_beats_the_random_prior_on_digits(scenario) -> None:  # noqa: ANN001
    # measured (this config, 5 per identity, seed 0): fgmia acc@1 0.72 against the random prior's 0.216 (mean of
    # its seeds 0-4); 600 training steps gave 0.48. 896 feature queries, ~40 s of one CPU core.
    labels = torch.arange(5).repeat_interleave(SAMPLES)
    target = TorchTarget(scenario.target_net, num_classes=5, input_shape=(1, 8, 8), name="net")
    baseline = sum(attack_acc(scenario, RandomPrior()(target, labels, prior=scenario.prior, seed=s)) for s in range(10)) / 10
    result = FGMIA(QUALITY, context=AttackContext(public_images=scenario.split.public[0]))(target, labels, seed=0)
    acc = attack_acc(scenario, result)
    assert result.queries == len(scenario.split.public[0])
    assert acc >= baseline + 0.3, (acc, baseline)
