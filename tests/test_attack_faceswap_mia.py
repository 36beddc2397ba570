"""Face-swap MIA (plugins/attacks/faceswap_mia.py) and its prior (plugins/priors/faceswap_ae.py): the attack
contract, faceswap's Original layout and optimiser as the prior's defaults, an untuned label embedding that
reconstructs (hypothesis), a frozen backbone left bit-identical by the fine-tuning, exact query accounting, early
stopping at tau, the tuned generator cached and paid for again, the facts reaching the bench record, and quality
on the tiny digits preset against random-prior."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from invertkit.core.interfaces import TorchTarget
from invertkit.core.interfaces.attack import Attack, AttackContext
from invertkit.core.testing.contracts import AttackContract
from invertkit.core.testing.strategies import make_tiny_target
from invertkit.plugins.attacks.faceswap_mia import FaceSwapMIA, faceswap_prior, finetune
from invertkit.plugins.attacks.random_prior import RandomPrior
from invertkit.plugins.priors.faceswap_ae import ConditionalSwap, FaceSwapAEBuilder, FaceSwapPrior, layout

from conftest import attack_acc  # noqa: E402

#: toy sizes for the contract's 4 classes of 1x8x8 images
TINY_PRIOR: dict[str, Any] = {"width": 4, "encoder_dim": 8, "epochs": 1, "batch_size": 8, "lr": 1e-3}
FAST: dict[str, Any] = {"prior": TINY_PRIOR, "tune_epochs": 1, "tune_batch_size": 8, "max_iterations": 3}


def public(n: int = 32, shape: tuple[int, ...] = (1, 8, 8)) -> Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(0))


class TestFaceSwapMIAContract(AttackContract):
    attack_cls = FaceSwapMIA
    config: ClassVar[dict[str, Any]] = FAST

    def make_attack(self) -> Attack:
        return self.attack_cls(dict(self.config), context=AttackContext(public_images=public()))


# ------------------------------------------------------------------------------------------- the prior
def test_prior_defaults_and_64px_layout_are_faceswap_s_original() -> None:
    cfg = FaceSwapAEBuilder.Config()
    assert (cfg.width, cfg.encoder_dim, cfg.batch_size, cfg.lr, cfg.beta1, cfg.beta2, cfg.loss) == (
        128, 1024, 16, 5e-5, 0.5, 0.99, "mae")
    assert layout(64) == (4, 4) and layout(28) == (3, 4) and layout(8) == (2, 2)
    nets = FaceSwapAEBuilder().networks((3, 64, 64))
    convs = [m for m in nets["encoder"].modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(ch, (5, 5), (2, 2)) for ch in (128, 256, 512, 1024)]
    inter = nets["inter"]
    assert (inter.squeeze.in_features, inter.squeeze.out_features) == (4 * 4 * 1024, 1024)
    assert inter.dense.out_features == 4 * 4 * 1024
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        h = inter(nets["encoder"](x))
        assert tuple(h.shape) == (1, 512, 8, 8)  # the Original encoder's output, UpscaleBlock(512)
        ups = [b[0].out_channels // 4 for b in nets["decoder"].blocks]
        assert ups == [256, 128, 64] and nets["decoder"].out.kernel_size == (5, 5)
        assert tuple(nets["decoder"](h).shape) == (1, 3, 64, 64)


@settings(max_examples=12, deadline=None)
@given(c=st.sampled_from([1, 3]), side=st.integers(4, 40), k=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_an_untuned_label_embedding_reconstructs_for_any_class(c: int, side: int, k: int, seed: int) -> None:
    torch.manual_seed(seed)
    builder = FaceSwapAEBuilder({"width": 2, "encoder_dim": 4})
    nets = builder.networks((c, side, side))
    prior = builder.wrap(nets)
    x = torch.rand(3, c, side, side, generator=torch.Generator().manual_seed(seed))
    swap = ConditionalSwap(prior, k)
    y = torch.randint(k, (3,), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        rec = prior.decode(prior.encode(x))
        assert rec.shape == x.shape and float(rec.min()) >= 0 and float(rec.max()) <= 1
        assert torch.equal(swap(x, y), rec)
        assert prior.sample_latent(2).shape == (2, 4)


def test_fine_tuning_leaves_the_backbone_and_the_prior_bit_identical() -> None:
    images = public(40)
    prior, _ = faceswap_prior(TINY_PRIOR, images)
    before = {n: {k: v.clone() for k, v in net.state_dict().items()} for n, net in prior.networks().items()}
    swap = ConditionalSwap(prior, 4, ["inter"])
    backbone = {k: v.clone() for k, v in swap.state_dict().items()
                if k.startswith(("encoder.", "inter.squeeze.", "decoder."))}
    tuned = {k: v.clone() for k, v in swap.state_dict().items() if k.startswith(("inter.dense.", "inter.up.", "embedding."))}
    target = make_tiny_target(0, num_classes=4, input_shape=(1, 8, 8))
    finetune(swap, target, images, epochs=3, batch_size=8, lr=1e-2, loss="hard", seed=0)
    after = swap.state_dict()
    assert all(torch.equal(after[k], v) for k, v in backbone.items()), "a frozen layer moved"
    assert all(not torch.equal(after[k], v) for k, v in tuned.items()), "a tuned layer did not train"
    assert all(torch.equal(net.state_dict()[k], v) for n, net in prior.networks().items() for k, v in before[n].items())
    assert all(p.grad is None for p in swap.parameters())
    with pytest.raises(Exception, match="unknown layer group"):
        ConditionalSwap(prior, 4, ["encoder"])


# ---------------------------------------------------------------------------------- queries, stopping
def test_queries_are_counted_exactly() -> None:
    images = public(37)
    target = make_tiny_target(0, num_classes=4, input_shape=(1, 8, 8))
    cfg = {**FAST, "tune_epochs": 2, "tune_batch_size": 8, "input": "confident", "max_iterations": 5}
    labels = torch.tensor([0, 1, 2, 3, 3, 1])
    result = FaceSwapMIA(cfg, context=AttackContext(public_images=images))(target, labels, seed=0)
    ex = result.extras
    # fine-tuning: 2 epochs of 37 // 8 = 4 batches, each F(x) and F(x') on 8 rows; the input choice: every public image
    assert ex["finetune_queries"] == 2 * 4 * 2 * 8 and ex["input_queries"] == 37
    # the search: one row per sample and evaluation; a sample at tau is evaluated once more than its steps
    assert len(labels) <= ex["search_queries"] <= len(labels) * 5
    assert result.queries == target.queries == ex["finetune_queries"] + ex["input_queries"] + ex["search_queries"]


def run_digits(scenario, labels: Tensor, **cfg: Any):  # noqa: ANN001, ANN201
    """The attack on the tiny digits target; the tuned generator cached (derived once, paid for every run)."""
    from invertkit.core.zoo.model_cache import derived_cache

    target = TorchTarget(scenario.target_net, num_classes=5, input_shape=(1, 8, 8), name="t")
    ctx = AttackContext(public_images=scenario.split.public[0], cache=derived_cache(scenario, target, "fs-quality"))
    attack = FaceSwapMIA({**QUALITY, **cfg}, context=ctx)
    return attack(target, labels, seed=0), target


def test_the_search_stops_early_once_the_confidence_reaches_tau(scenario) -> None:  # noqa: ANN001
    labels = torch.arange(5).repeat_interleave(2)
    easy, t_easy = run_digits(scenario, labels, tau=1e-3, max_iterations=50)
    assert easy.extras["iterations_max"] == 0 and easy.extras["success_rate_at_tau"] == 1.0
    assert easy.extras["search_queries"] == len(labels)  # one generation each, then no more queries
    hard, _ = run_digits(scenario, labels, tau=0.99, max_iterations=50)
    assert hard.extras["iterations_mean"] > easy.extras["iterations_mean"]
    assert hard.extras["search_queries"] < len(labels) * 50 or hard.extras["success_rate_at_tau"] < 1.0
    with torch.no_grad():
        conf = torch.softmax(scenario.target_net(hard.images), 1)[torch.arange(len(labels)), labels]
    assert torch.allclose(conf, hard.scores, atol=1e-4)  # the score is the target's confidence in y_t
    assert hard.extras["success_rate_at_tau"] == pytest.approx(float((conf >= 0.99 - 1e-4).float().mean()))


def test_the_tuned_generator_is_cached_and_paid_for_again(scenario) -> None:  # noqa: ANN001
    from invertkit.core.zoo.model_cache import derived_cache

    images = scenario.split.public[0][:48]

    def run() -> tuple[Any, Any]:
        target = TorchTarget(scenario.target_net, num_classes=5, input_shape=(1, 8, 8), name="t")
        ctx = AttackContext(public_images=images, cache=derived_cache(scenario, target, "faceswap-mia-test"))
        return FaceSwapMIA(FAST, context=ctx)(target, torch.arange(5), seed=0), target

    (first, t1), (second, t2) = run(), run()
    assert first.extras["finetune_queries"] == second.extras["finetune_queries"] == 1 * 6 * 2 * 8
    assert first.queries == t1.queries and second.queries == t2.queries == first.queries
    assert torch.equal(first.images, second.images)


def test_success_rate_and_iterations_reach_the_bench_record(tiny_catalog, plugins) -> None:  # noqa: ANN001
    from invertkit.core.bench.plan import Cell
    from invertkit.core.bench.runner import run_cell

    cell = Cell(attack="faceswap-mia", defense="none", target="tiny-cnn", samples_per_identity=1,
                metrics=("attack-acc",), attack_options={**FAST, "prior": {**TINY_PRIOR, "epochs": 2}})
    record = run_cell(cell, tiny_catalog, plugins, use_cache=False, debug=True).record
    facts = record["attack_facts"]
    assert record["status"] == "ok" and facts["tau"] == 0.9
    assert 0.0 <= facts["success_rate_at_tau"] <= 1.0 and 0 <= facts["iterations_mean"] <= 3
    assert record["metrics"]["queries"] == facts["finetune_queries"] + facts["search_queries"]


# -------------------------------------------------------------------------------- quality (digits)
SAMPLES = 5  # reconstructions per identity

#: a small face-swap autoencoder and five fine-tuning epochs: what fits a CPU test
QUALITY: dict[str, Any] = {"prior": {"width": 8, "encoder_dim": 32, "epochs": 20, "lr": 2e-3, "batch_size": 32},
                           "tune_epochs": 5}


def test_faceswap_mia_beats_the_random_prior(scenario) -> None:  # noqa: ANN001
    # measured on the tiny digits preset (this config, 5 per identity, seed 0): acc@1 0.68 (eval model), target
    # top-1 1.00, success rate at tau 0.9: 1.00 in 10.1 steps on average; random-prior acc@1 0.184 (mean of seeds 0-9)
    labels = torch.arange(5).repeat_interleave(SAMPLES)
    target = TorchTarget(scenario.target_net, num_classes=5, input_shape=(1, 8, 8), name="t")
    base = [RandomPrior()(target, labels, prior=scenario.prior, seed=s) for s in range(5)]
    base_acc = sum(attack_acc(scenario, r) for r in base) / len(base)
    with torch.no_grad():
        base_top1 = sum(float((scenario.target_net(r.images).argmax(1) == labels).float().mean()) for r in base) / len(base)
    result, t = run_digits(scenario, labels)
    with torch.no_grad():
        top1 = float((scenario.target_net(result.images).argmax(1) == labels).float().mean())
    assert top1 >= base_top1 + 0.5, (top1, base_top1)
    assert attack_acc(scenario, result) >= base_acc + 0.3, (attack_acc(scenario, result), base_acc)
    assert result.extras["success_rate_at_tau"] >= 0.8
    assert result.queries == t.queries > 0


def test_bad_input_is_one_clear_error_before_any_query() -> None:
    from invertkit.core.errors import ConfigError, UsageError

    target = make_tiny_target(0, num_classes=4, input_shape=(1, 8, 8))
    with pytest.raises(UsageError, match="public images"):
        FaceSwapMIA(FAST)(target, torch.tensor([0]), seed=0)
    with pytest.raises(UsageError, match=r"target classes in \[0, 4\)"):
        FaceSwapMIA(FAST, context=AttackContext(public_images=public()))(target, torch.tensor([7]), seed=0)
    with pytest.raises(UsageError, match="public images of shape"):
        FaceSwapMIA(FAST, context=AttackContext(public_images=public(shape=(1, 6, 6))))(target, torch.tensor([0]), seed=0)
    assert target.queries == 0
    with pytest.raises(ConfigError, match="tune"):
        FaceSwapMIA({"tune": ["encoder"]})
