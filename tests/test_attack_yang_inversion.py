"""Yang et al.'s training-based inversion (plugins/attacks/yang_inversion.py): the official alignment and decoder
layout, the attack contract, query accounting through probs and top-k access and through the derived-artifact
cache, and quality on the tiny digits scenario through a black-box target, a top-1 API and the rounding
defense."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invertkit.core.interfaces import ACCESS_LEVELS, Restricted, TorchTarget
from invertkit.core.interfaces.attack import Attack, AttackContext
from invertkit.core.interfaces.defense import DefenseContext
from invertkit.core.testing.contracts import AttackContract
from invertkit.plugins.attacks.random_prior import RandomPrior
from invertkit.plugins.attacks.yang_inversion import InversionModel, YangInversion, align, decoder_layout
from invertkit.plugins.defenses.rounding import Rounding

from conftest import attack_acc  # noqa: E402

#: a CPU-sized decoder for the contract: one epoch, 8 channels
FAST: dict[str, Any] = {"epochs": 1, "batch_size": 16, "ngf": 8}


def public_context(n: int = 32, seed: int = 0, shape: tuple[int, ...] = (1, 8, 8)) -> AttackContext:
    return AttackContext(public_images=torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed)))


class TestYangInversionContract(AttackContract):
    attack_cls = YangInversion
    config: ClassVar[dict[str, Any]] = FAST

    def make_attack(self) -> Attack:
        return self.attack_cls(dict(self.config), context=public_context())


# ------------------------------------------------------------------------------------- the official parts
def official_alignment(x: Tensor, truncation: int, c: float) -> Tensor:
    """``Inversion.forward``'s first lines in the official ``model.py`` (before the decoder), on the CPU."""
    topk, indices = torch.topk(x, truncation)
    topk = torch.clamp(torch.log(topk), min=-1000) + c
    topk_min = topk.min(1, keepdim=True)[0]
    topk = topk + F.relu(-topk_min)
    return torch.zeros(len(x), x.shape[1]).scatter_(1, indices, topk)


@pytest.mark.parametrize("truncation", [1, 3, 10])
@pytest.mark.parametrize("c", [50.0, 5.0])
def test_alignment_is_the_official_one_on_released_softmax_vectors(truncation: int, c: float) -> None:
    g = torch.Generator().manual_seed(truncation)
    probs = torch.softmax(6 * torch.randn((64, 10), generator=g), dim=1)  # some entries below e^-c: the shift acts
    assert torch.allclose(align(probs, truncation, c), official_alignment(probs, truncation, c), atol=1e-4)
    assert (align(probs, truncation, c) != 0).sum(1).le(truncation).all()  # the shifted minimum is 0


def test_entries_not_released_stay_zero() -> None:
    one_hot = torch.eye(5)
    assert torch.equal(align(one_hot, None, 50.0), 50.0 * one_hot)  # the official code would give 1000 * e_y
    released = torch.tensor([[0.7, 0.3, 0.0, 0.0]])  # a top-2 API: the zeros are not released
    expected = torch.tensor([[50 + math.log(0.7), 50 + math.log(0.3), 0.0, 0.0]])
    assert torch.allclose(align(released, None, 50.0), expected)


@pytest.mark.parametrize(("size", "layout"),
                         [(64, (4, 4, 4)), (32, (4, 4, 3)), (28, (7, 7, 2)), (8, (4, 4, 1)), (7, (7, 7, 0))])
def test_decoder_layout(size: int, layout: tuple[int, int, int]) -> None:
    assert decoder_layout(size, size) == layout
    model = InversionModel(10, (1, size, size), ngf=4)
    assert model(torch.softmax(torch.randn(3, 10), 1)).shape == (3, 1, size, size)


def test_the_64_pixel_decoder_is_the_official_architecture() -> None:
    model = InversionModel(530, (1, 64, 64), ngf=128)
    convs = [m for m in model.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding) for m in convs] == [
        (530, 1024, (4, 4), (1, 1), (0, 0)), (1024, 512, (4, 4), (2, 2), (1, 1)), (512, 256, (4, 4), (2, 2), (1, 1)),
        (256, 128, (4, 4), (2, 2), (1, 1)), (128, 1, (4, 4), (2, 2), (1, 1))]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.decoder) == 4
    assert sum(isinstance(m, nn.Tanh) for m in model.decoder) == 4 and isinstance(model.decoder[-1], nn.Sigmoid)


def test_defaults_are_the_official_ones() -> None:
    cfg = YangInversion.Config()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.ngf, cfg.c, cfg.truncation, cfg.train_seed) == (
        100, 128, 0.0002, 128, 50.0, None, 1)
    assert not YangInversion.needs_prior


# ------------------------------------------------------------------------------------------ the scenario
SAMPLES = 5
#: the tiny scenario's decoder: the official recipe but 30 epochs (about 3 s on one thread)
TINY: dict[str, Any] = {"epochs": 30}


def white_box(scenario) -> TorchTarget:  # noqa: ANN001
    return TorchTarget(scenario.target_net, num_classes=5, input_shape=(1, 8, 8), name="tiny-cnn")


def identities(samples: int = SAMPLES) -> Tensor:
    return torch.arange(5).repeat_interleave(samples)


def context(scenario) -> AttackContext:  # noqa: ANN001
    return AttackContext(public_images=scenario.split.public[0], public_labels=scenario.split.public[1])


@pytest.fixture(scope="module")
def random_prior_baseline(scenario) -> float:  # noqa: ANN001
    """Mean attack acc@1 of ``random-prior`` over 10 seeds (0.184 on the tiny scenario)."""
    accs = [attack_acc(scenario, RandomPrior()(white_box(scenario), identities(), prior=scenario.prior, seed=s))
            for s in range(10)]
    return sum(accs) / len(accs)


def deployed(scenario, access: str) -> Any:  # noqa: ANN001
    if access == "black-box":
        return Restricted(white_box(scenario), ACCESS_LEVELS["black-box"])
    if access == "top-1":  # a top-k API releasing only the top-1 confidence: no probs capability at all
        return Restricted(white_box(scenario), ACCESS_LEVELS["top-k"], max_topk=1)
    if access == "rounding":  # confidences rounded to one decimal, as deployed
        return Rounding({"decimals": 1}).apply(Restricted(white_box(scenario), ACCESS_LEVELS["black-box"]),
                                               DefenseContext())
    raise AssertionError(access)


@pytest.mark.parametrize("access", ["black-box", "top-1", "rounding"])
def test_yang_beats_the_random_prior(scenario, random_prior_baseline: float, access: str) -> None:  # noqa: ANN001
    # measured (30 epochs, train seeds 1-3): acc@1 0.4-0.6 through each access, against a random-prior mean of
    # 0.184 (the decoder is deterministic: every sample of an identity is the same image, acc@1 moves in 0.2s)
    target = deployed(scenario, access)
    result = YangInversion(TINY, context=context(scenario))(target, identities(), prior=None, seed=0)
    acc = attack_acc(scenario, result)
    assert acc >= random_prior_baseline + 0.15, (acc, random_prior_baseline)
    # one query per public image, nothing at attack time
    assert result.queries == target.queries == len(scenario.split.public[0])


def test_top_k_access_reads_the_released_top_k_only(scenario) -> None:  # noqa: ANN001
    inner = white_box(scenario)
    target = Restricted(inner, ACCESS_LEVELS["top-k"], max_topk=2)
    n = 64
    ctx = AttackContext(public_images=scenario.split.public[0][:n])
    result = YangInversion({**FAST, "truncation": 3}, context=ctx)(target, identities(1), seed=0)
    assert result.queries == target.queries == inner.queries == n
    assert result.images.shape == (5, 1, 8, 8)


def test_max_public_caps_the_queries(scenario) -> None:  # noqa: ANN001
    target = deployed(scenario, "black-box")
    result = YangInversion({**FAST, "max_public": 40}, context=context(scenario))(target, identities(1), seed=0)
    assert result.queries == 40


def test_the_cached_decoder_is_reused_and_paid_for_again(scenario) -> None:  # noqa: ANN001
    from invertkit.core.zoo.model_cache import derived_cache

    n = 96
    images = scenario.split.public[0][:n]

    def run() -> tuple[Any, Any]:
        target = deployed(scenario, "black-box")
        ctx = AttackContext(public_images=images, cache=derived_cache(scenario, target, "yang-test"))
        return YangInversion(FAST, context=ctx)(target, identities(2), seed=0), target

    (first, t1), (second, t2) = run(), run()
    assert first.queries == t1.queries == n  # trained: one query per public image
    assert second.queries == t2.queries == n  # loaded from the cache: the same queries charged again
    assert torch.equal(first.images, second.images)


def test_the_run_seed_does_not_change_the_decoder(scenario) -> None:  # noqa: ANN001
    ctx = AttackContext(public_images=scenario.split.public[0][:64])
    a = YangInversion(FAST, context=ctx)(deployed(scenario, "black-box"), identities(1), seed=0)
    b = YangInversion(FAST, context=ctx)(deployed(scenario, "black-box"), identities(1), seed=7)
    c = YangInversion({**FAST, "train_seed": 2}, context=ctx)(deployed(scenario, "black-box"), identities(1), seed=0)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


# --------------------------------------------------------------------------------------- budget planning
def test_a_budget_ten_times_below_the_training_set_plans_a_smaller_one(scenario) -> None:  # noqa: ANN001
    n = len(scenario.split.public[0])
    budget = n // 10
    target = Restricted(white_box(scenario), ACCESS_LEVELS["black-box"], budget=budget)
    result = YangInversion(FAST, context=context(scenario))(target, identities(1), seed=0)
    # it completes on the public images it could afford (one query each), within the budget, and says so
    assert result.queries == target.queries == budget and not target.exhausted
    assert result.extras == {"public_images": n, "planned_public_images": budget, "exhausted": True}
    assert result.images.shape == (5, 1, 8, 8) and bool(torch.isfinite(result.images).all())


def test_no_budget_spends_as_before_and_reports_no_plan(scenario) -> None:  # noqa: ANN001
    n = len(scenario.split.public[0])
    target = deployed(scenario, "black-box")
    result = YangInversion(FAST, context=context(scenario))(target, identities(1), seed=0)
    assert result.queries == target.queries == n and result.extras == {}
    # a budget that affords every public image changes nothing but the report
    roomy = Restricted(white_box(scenario), ACCESS_LEVELS["black-box"], budget=n)
    same = YangInversion(FAST, context=context(scenario))(roomy, identities(1), seed=0)
    assert torch.equal(same.images, result.images) and same.queries == n
    assert same.extras == {"public_images": n, "planned_public_images": n}


def test_a_budget_affording_no_public_image_ends_with_the_untrained_decoder(scenario) -> None:  # noqa: ANN001
    target = Restricted(white_box(scenario), ACCESS_LEVELS["black-box"], budget=0)
    result = YangInversion(FAST, context=context(scenario))(target, identities(1), seed=0)
    assert result.queries == 0 and result.extras["exhausted"] and result.extras["planned_public_images"] == 0
    assert bool(torch.isfinite(result.images).all())


def test_a_wrapper_refusal_ends_with_the_images_answered_before_it(scenario) -> None:  # noqa: ANN001
    # the attacker's wrapper has no budget (the plan is every image); the one it wraps refuses past 100 queries
    inner = Restricted(white_box(scenario), ACCESS_LEVELS["black-box"], budget=100)
    target = Restricted(inner, ACCESS_LEVELS["black-box"])
    result = YangInversion(FAST, context=context(scenario))(target, identities(1), seed=0)
    assert inner.exhausted and result.queries == target.queries <= 100
    assert result.extras["exhausted"] and result.extras["answered_public_images"] == result.queries
    assert bool(torch.isfinite(result.images).all())


def test_the_cached_decoder_is_keyed_by_the_planned_count(scenario) -> None:  # noqa: ANN001
    from invertkit.core.zoo.model_cache import derived_cache

    n = 96
    images = scenario.split.public[0][:n]

    def run(budget: int | None) -> Any:
        target = Restricted(white_box(scenario), ACCESS_LEVELS["black-box"], budget=budget)
        ctx = AttackContext(public_images=images, cache=derived_cache(scenario, target, "yang-plan-test"))
        return YangInversion(FAST, context=ctx)(target, identities(1), seed=0)

    cut, full, cut_again = run(30), run(None), run(30)
    assert cut.queries == cut_again.queries == 30 and full.queries == n  # the full decoder was not the cut one
    assert torch.equal(cut.images, cut_again.images) and not torch.equal(cut.images, full.images)
    assert cut_again.extras["exhausted"]
