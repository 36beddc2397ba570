"""LOKT (plugins/attacks/lokt.py): the attack contract, the official defaults, the surrogates' DenseNet layout
against the official feature sizes, exact label-query accounting, the cached T-ACGAN and surrogates paid for
again, planning within a query budget (planned sizes in the cache keys) and a refused query, and quality
through a label-only target on the tiny digits preset."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from invertkit.core.interfaces import ACCESS_LEVELS, Restricted, TorchTarget
from invertkit.core.interfaces.attack import Attack, AttackContext
from invertkit.core.testing.contracts import AttackContract
from invertkit.plugins.attacks.lokt import DENSENETS, LOKT, DenseNet, build_surrogate
from invertkit.plugins.attacks.random_prior import RandomPrior

from conftest import attack_acc  # noqa: E402

#: everything at toy size (the contract's 4 classes, 1x8x8 images): the DenseNet-121 code path, thinned
FAST: dict[str, Any] = {
    "steps": 2, "uncond_steps": 1, "n_dis": 2, "batch_size": 8, "width": 4, "latent_dim": 8,
    "samples_per_class": 3, "surrogates": ["densenet121"], "surrogate_width": 0.1, "surrogate_epochs": 2,
    "epoch_samples": 16, "surrogate_batch_size": 8, "iterations": 3,
}


def expected_queries(cfg: dict[str, Any], classes: int) -> int:
    """The labels LOKT asks for: every fake the discriminator sees after the warm-up, and the surrogates'
    labelled samples."""
    c = LOKT.Config(**cfg)
    return c.steps * c.n_dis * c.batch_size + classes * c.samples_per_class


def public(n: int = 32, shape: tuple[int, ...] = (1, 8, 8)) -> Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(0))


class TestLOKTContract(AttackContract):
    attack_cls = LOKT
    config: ClassVar[dict[str, Any]] = FAST

    def make_attack(self) -> Attack:
        return self.attack_cls(dict(self.config), context=AttackContext(public_images=public()))


def test_defaults_are_the_official_code_s() -> None:
    cfg = LOKT.Config()
    # train_tacgan.py (README: --alpha=1.5 --cGAN), n_uncond for CelebA
    assert (cfg.latent_dim, cfg.width, cfg.steps, cfg.uncond_steps, cfg.n_dis, cfg.batch_size) == (128, 64, 19000, 1000, 5, 128)
    assert (cfg.lr, cfg.beta1, cfg.beta2, cfg.alpha, cfg.train_seed) == (2e-4, 0.0, 0.9, 1.5, 46)
    # create_dataset.py, train_surrogate_model.py, README's --classid='0,1,2'
    assert cfg.samples_per_class == 500 and cfg.surrogates == ["densenet121", "densenet161", "densenet169"]
    assert not cfg.include_discriminator
    assert (cfg.surrogate_epochs, cfg.epoch_samples, cfg.surrogate_batch_size) == (200, 30000, 256)
    assert (cfg.surrogate_lr, cfg.surrogate_momentum, cfg.surrogate_weight_decay) == (0.1, 0.9, 5e-4)
    # plg_tacgan.py (README: --inv_loss_type=margin)
    assert (cfg.iterations, cfg.attack_lr, cfg.loss, cfg.views) == (600, 0.1, "margin", 2)
    assert LOKT.requires == frozenset(ACCESS_LEVELS["label-only"]) and not LOKT.needs_prior


@pytest.mark.parametrize(("arch", "flat"), [("densenet121", 4096), ("densenet161", 8832)])
def test_densenets_at_64px_have_the_official_feature_size(arch: str, flat: int) -> None:
    # the official surrogates flatten torchvision's feature map of a 64x64 face: feat_dim 4096 and 8832
    net = build_surrogate(None, arch, 10, (3, 64, 64), 1.0)
    assert isinstance(net, DenseNet) and net.fc.in_features == flat


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_densenets_scale_to_small_images(shape: tuple[int, int, int]) -> None:
    growth, blocks, stem = DENSENETS["densenet169"]
    net = DenseNet(5, shape, 4, blocks, 8).eval()
    out = net(torch.rand(2, *shape))
    assert out.shape == (2, 5)
    side = net.features(torch.rand(1, *shape)).shape[-1]
    assert side >= 2  # three transitions leave at least a 2x2 map


def label_only(net, classes: int, shape: tuple[int, int, int], budget: int | None = None) -> Restricted:  # noqa: ANN001
    return Restricted(TorchTarget(net, num_classes=classes, input_shape=shape, name="net"), ACCESS_LEVELS["label-only"],
                      budget=budget)


def test_queries_are_exactly_the_labels_asked_for_and_none_at_attack_time() -> None:
    from invertkit.core.testing.strategies import make_tiny_target

    net = make_tiny_target(0, num_classes=4, input_shape=(1, 8, 8))
    cfg = {**FAST, "steps": 3, "uncond_steps": 2, "n_dis": 3, "batch_size": 5, "samples_per_class": 7,
           "include_discriminator": True, "iterations": 4}
    target = Restricted(net, ACCESS_LEVELS["label-only"])
    result = LOKT(cfg, context=AttackContext(public_images=public(11)))(target, torch.tensor([0, 1, 2, 3, 3]), seed=1)
    assert result.queries == target.queries == expected_queries(cfg, 4) == 3 * 3 * 5 + 4 * 7
    assert result.extras["tacgan_queries"] == 45 and result.extras["surrogate_queries"] == 28
    assert result.extras["surrogates"] == 2  # the DenseNet and the discriminator's head
    assert result.images.shape == (5, 1, 8, 8)


def test_the_discriminator_alone_buys_no_labelled_samples() -> None:
    from invertkit.core.errors import ConfigError
    from invertkit.core.testing.strategies import make_tiny_target

    cfg = {**FAST, "surrogates": [], "include_discriminator": True}
    target = Restricted(make_tiny_target(0, num_classes=4, input_shape=(1, 8, 8)), ACCESS_LEVELS["label-only"])
    result = LOKT(cfg, context=AttackContext(public_images=public()))(target, torch.tensor([0, 1]), seed=0)
    assert result.queries == target.queries == 2 * 2 * 8 and result.extras["surrogates"] == 1
    with pytest.raises(ConfigError):
        LOKT({**cfg, "include_discriminator": False}, context=AttackContext(public_images=public()))(
            target, torch.tensor([0]), seed=0)
    assert target.queries == 2 * 2 * 8  # refused before any query


def test_the_cached_tacgan_and_surrogates_are_reused_and_paid_for_again(scenario) -> None:  # noqa: ANN001
    from invertkit.core.zoo.model_cache import derived_cache

    images = scenario.split.public[0][:40]
    cfg = {**FAST, "surrogates": ["small-cnn"]}

    def run() -> tuple[Any, Any]:
        target = label_only(scenario.target_net, 5, (1, 8, 8))
        ctx = AttackContext(public_images=images, cache=derived_cache(scenario, target, "lokt-test"))
        return LOKT(cfg, context=ctx)(target, torch.arange(5), seed=0), target

    (first, t1), (second, t2) = run(), run()
    assert first.queries == t1.queries == second.queries == t2.queries == expected_queries(cfg, 5)
    assert second.extras["tacgan_queries"] == first.extras["tacgan_queries"] == 2 * 2 * 8
    assert torch.equal(first.images, second.images)


# -------------------------------------------------------------------------------- quality (digits)
SAMPLES = 5  # reconstructions per identity

#: a short T-ACGAN and one small surrogate: what fits a CPU test
QUALITY: dict[str, Any] = {
    "steps": 600, "uncond_steps": 50, "batch_size": 64, "width": 32, "latent_dim": 32, "lr": 5e-4,
    "samples_per_class": 200, "surrogates": ["small-cnn"], "surrogate_epochs": 10, "epoch_samples": 2000,
    "surrogate_batch_size": 64, "iterations": 100,
}


def test_lokt_beats_the_random_prior_through_labels_only(scenario) -> None:  # noqa: ANN001
    # measured on the tiny digits preset (this config, 5 per identity, seed 0): lokt acc@1 0.88, the T-ACGAN's
    # fakes labelled as asked by the target 0.80; random-prior 0.184 (mean over seeds 0-9); 193,000 label
    # queries. (The bundled digits preset, same config: 0.80 and 0.92 for seeds 0 and 1 against 0.216.)
    labels = torch.arange(5).repeat_interleave(SAMPLES)
    baseline = sum(attack_acc(scenario, RandomPrior()(label_only(scenario.target_net, 5, (1, 8, 8)), labels,
                                                      prior=scenario.prior, seed=s)) for s in range(10)) / 10
    target = label_only(scenario.target_net, 5, (1, 8, 8))
    result = LOKT(QUALITY, context=AttackContext(public_images=scenario.split.public[0]))(target, labels, seed=0)
    acc = attack_acc(scenario, result)
    assert result.queries == target.queries == expected_queries(QUALITY, 5)
    assert acc >= baseline + 0.3, (acc, baseline)


# ------------------------------------------------------------------------------------------- budgets
#: 20 conditional iterations of 2 x 8 labels and 10 samples per class: 360 label queries on 4 classes
BUDGETED: dict[str, Any] = {**FAST, "steps": 20, "samples_per_class": 10}


class MemoryCache:
    """``context.cache`` in memory: trains once per key (what a bench cache does, without the re-charge)."""

    def __init__(self) -> None:
        self.store: dict[str, Any] = {}

    def __call__(self, key: dict[str, Any], train: Any, build: Any, *, label: str) -> Any:
        import json

        k = json.dumps(key, sort_keys=True, default=str)
        if k not in self.store:
            self.store[k] = train().eval()
        return self.store[k]

    def keys(self, what: str) -> list[dict[str, Any]]:
        import json

        return [json.loads(k) for k in self.store if json.loads(k)["what"] == what]


def test_a_budget_ten_times_smaller_shrinks_the_training_and_keys_the_cache_by_it() -> None:
    from invertkit.core.testing.strategies import make_tiny_target

    net = make_tiny_target(0, num_classes=4, input_shape=(1, 8, 8))
    labels = torch.tensor([0, 1, 2, 3, 3])
    cache = MemoryCache()

    def run(budget: int | None, **over: Any) -> tuple[Any, Restricted]:
        target = Restricted(net, ACCESS_LEVELS["label-only"], budget=budget)
        ctx = AttackContext(public_images=public(), cache=cache)
        return LOKT({**BUDGETED, **over}, context=ctx)(target, labels, seed=0), target

    free, _ = run(None)
    # no budget: what LOKT spent before it planned (the same images as before this change, checked when made)
    assert free.queries == expected_queries(BUDGETED, 4) == 360 and "exhausted" not in free.extras
    result, target = run(36)
    ex = result.extras
    # both phases shrink by one factor: 2 iterations (32 labels) and 1 sample per class (4 labels)
    assert result.queries == target.queries == 36 and not target.exhausted  # planned: nothing refused
    assert ex["exhausted"] is True
    assert (ex["planned_tacgan_steps"], ex["planned_samples_per_class"], ex["planned_queries"]) == (2, 1, 36)
    assert (ex["tacgan_queries"], ex["surrogate_queries"], ex["surrogates"]) == (32, 4, 1)
    # the cache holds the planned models beside the unbudgeted ones, keyed by their planned sizes
    assert sorted(k["cfg"]["steps"] for k in cache.keys("lokt-tacgan")) == [2, 20]
    assert sorted(k["cfg"]["samples_per_class"] for k in cache.keys("lokt-surrogates")) == [1, 10]
    # every identity is searched on the surrogate: a longer search moves every row's image
    longer, _ = run(36, iterations=6)
    assert len(cache.store) == 4  # the same planned models, re-used
    assert all(not torch.equal(a, b) for a, b in zip(result.images, longer.images))
    assert bool(torch.isfinite(result.images).all()) and result.images.shape == free.images.shape


def test_a_budget_below_the_classes_trains_nothing_and_still_returns_every_identity() -> None:
    from invertkit.core.testing.strategies import make_tiny_target

    target = Restricted(make_tiny_target(0, num_classes=4, input_shape=(1, 8, 8)), ACCESS_LEVELS["label-only"],
                        budget=3)
    result = LOKT(BUDGETED, context=AttackContext(public_images=public()))(target, torch.arange(4), seed=0)
    ex = result.extras
    assert result.queries == 0 and ex["exhausted"] is True and ex["surrogates"] == 0
    assert (ex["planned_tacgan_steps"], ex["planned_samples_per_class"]) == (0, 0)
    assert result.images.shape == (4, 1, 8, 8) and bool(torch.isfinite(result.images).all())


def test_a_refused_query_ends_the_training_with_what_it_has() -> None:
    # a budget the attack cannot see (the wrapped target's; the view says None) is not planned for: the second
    # conditional iteration is refused; the T-ACGAN of one iteration is kept out of the cache, no sample is
    # labelled, and its discriminator's head (taught the target's labels) is the model searched
    from invertkit.core.testing.strategies import make_tiny_target

    hidden = make_tiny_target(0, num_classes=4, input_shape=(1, 8, 8), budget=20)
    target = Restricted(hidden, ACCESS_LEVELS["label-only"])
    cache = MemoryCache()
    result = LOKT(FAST, context=AttackContext(public_images=public(), cache=cache))(target, torch.arange(4), seed=0)
    ex = result.extras
    assert target.budget is None and hidden.exhausted and ex["exhausted"] is True
    assert result.queries == target.queries == hidden.queries == 16
    assert (ex["tacgan_queries"], ex["surrogate_queries"], ex["surrogates"]) == (16, 0, 1)
    assert not cache.store
    assert result.images.shape == (4, 1, 8, 8) and bool(torch.isfinite(result.images).all())
