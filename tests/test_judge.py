"""The second judge (plugins/metrics/judge.py, core/zoo/judges.py) and the attacked-identity reference set of
the set metrics (FID, KID, PRDC, fid-eval; core/metrics.reference_images).

The judge metric runs on hand-made judges (fixed linear maps with the ``features``/``head`` split) whose every
key is computed by hand below; batch-split invariance is checked with hypothesis; the preset judges are
trained on the bundled digits data (a few seconds)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from invertkit.core import metrics as core_metrics
from invertkit.core.errors import UsageError
from invertkit.core.interfaces.metric import MetricContext


# ------------------------------------------------------------------ hand-made judges
class LinearJudge(nn.Module):
    """Features: the first three pixels of a 4-pixel image; logits: ``scale * f[:, perm]``."""

    def __init__(self, scale: float, perm=(0, 1, 2)) -> None:
        super().__init__()
        self.scale, self.perm = scale, list(perm)

    def features(self, x: Tensor) -> Tensor:
        return x.flatten(1)[:, :3].double()

    def head(self, f: Tensor) -> Tensor:
        return self.scale * f[:, self.perm]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def eval_logits(x: Tensor) -> Tensor:
    """The evaluation model: the first three pixels, but the 4th pixel (an "adversarial pattern") forces class 0."""
    x = x.flatten(1).double()
    return 10 * x[:, :3] + 100 * x[:, 3:4] * torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)


def img(*v: float) -> Tensor:
    return torch.tensor(v, dtype=torch.float32).view(1, 1, 4)


#: private images: identity 0 (one bright, one dim), 1 and 2
PRIV_X = torch.stack([img(1, 0, 0, 0), img(0.2, 0, 0, 0), img(0, 1, 0, 0), img(0, 0.9, 0, 0),
                      img(0, 0, 1, 0), img(0, 0, 0.8, 0)])
PRIV_Y = torch.tensor([0, 0, 1, 1, 2, 2])
#: judge A is confident and right; judge B is soft and swaps identities 1 and 2
JUDGES = [LinearJudge(10.0), LinearJudge(1.0, (0, 2, 1))]

# reconstruction: (image, label) and, by hand, [ensemble hit, unanimous, NN-feature hit, NN-pixel hit, eval hit]
CASES = [
    (img(1, 0, 0, 0), 0, [1, 1, 1, 1, 1]),  # everyone agrees
    # A says 1 (p ~ 1), B says 2 (p 0.58): ensemble mean softmax (0.61 vs 0.29) follows A; not unanimous
    (img(0, 1, 0, 0), 1, [1, 0, 1, 1, 1]),
    # adversarial: the evaluation model accepts (pattern pixel), the judges see identity 2
    (img(0, 0, 1, 1), 0, [0, 0, 0, 0, 1]),
    (img(0, 0, 1, 0), 1, [0, 0, 0, 0, 0]),  # a plain failure: no one accepts
    # nearest in feature space (cosine) is identity 1; in pixel space the dim identity-0 image (0.2, 0, 0, 0)
    (img(0.1, 0.15, 0, 0), 0, [0, 0, 0, 1, 0]),
]
REC_X = torch.stack([c[0] for c in CASES])
REC_Y = torch.tensor([c[1] for c in CASES])


def judge_ctx(judges=JUDGES, **kw) -> MetricContext:
    return MetricContext(eval_logits=eval_logits, eval_features=lambda x: x.flatten(1), private_images=PRIV_X,
                         private_labels=PRIV_Y, num_classes=3, judges=list(judges), **kw)


def run_judge(plugins, x=REC_X, y=REC_Y, cuts=(), ctx=None) -> dict[str, float]:
    metric = plugins.get("metric", "judge")(ctx or judge_ctx())
    bounds = [0, *sorted(cuts), len(x)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        metric.update(x[a:b], y[a:b])
    out = metric.compute()
    assert set(out) == set(metric.keys) and set(metric.higher_is_better) <= set(metric.keys)
    return out


def test_judge_keys_by_hand(plugins) -> None:
    hits = torch.tensor([c[2] for c in CASES], dtype=torch.float64)
    n = len(CASES)
    adversarial = ((hits[:, 4] == 1) & (hits[:, 0] == 0)).sum().item()
    expected = {
        "judge_acc": hits[:, 0].sum().item() / n,  # 2/5
        "judge_agree": hits[:, 1].sum().item() / n,  # 1/5
        "nn_feat_acc": hits[:, 2].sum().item() / n,  # 2/5
        "nn_pixel_acc": hits[:, 3].sum().item() / n,  # 3/5
        "adversarial_rate": adversarial / n,  # 1/5
        "adversarial_share": adversarial / hits[:, 4].sum().item(),  # 1/3
    }
    assert expected == pytest.approx({"judge_acc": 0.4, "judge_agree": 0.2, "nn_feat_acc": 0.4, "nn_pixel_acc": 0.6,
                                      "adversarial_rate": 0.2, "adversarial_share": 1 / 3})
    assert run_judge(plugins) == pytest.approx(expected, abs=1e-12)


def test_adversarial_reconstructions_are_counted(plugins) -> None:
    # only the adversarial one: the evaluation model accepts it, the judges reject it
    got = run_judge(plugins, REC_X[2:3], REC_Y[2:3])
    assert got["adversarial_rate"] == 1.0 and got["adversarial_share"] == 1.0 and got["judge_acc"] == 0.0
    # accepted by no one: no adversarial reconstruction and a share of 0, not NaN
    got = run_judge(plugins, REC_X[3:], REC_Y[3:])
    assert got["adversarial_rate"] == 0.0 and got["adversarial_share"] == 0.0
    # a judge that agrees with the evaluation model's pattern: nothing is adversarial any more
    class PatternJudge(LinearJudge):
        def head(self, f: Tensor) -> Tensor:
            return eval_logits(self._x)

        def features(self, x: Tensor) -> Tensor:
            self._x = x
            return super().features(x)

    got = run_judge(plugins, ctx=judge_ctx([PatternJudge(1.0)]))
    assert got["adversarial_rate"] == 0.0 and got["judge_acc"] == pytest.approx(0.6)


def test_judge_empty_and_reset(plugins) -> None:
    metric = plugins.get("metric", "judge")(judge_ctx())
    assert all(v != v for v in metric.compute().values())  # NaN without reconstructions
    metric.update(REC_X, REC_Y)
    metric.reset()
    metric.update(REC_X[:1], REC_Y[:1])
    assert metric.compute()["judge_acc"] == 1.0


def test_judge_without_judges_is_a_usage_error(plugins) -> None:
    with pytest.raises(UsageError, match=r"metric 'judge' needs judge models: the preset declares none "
                                         r"\(add `judges = \[...\]` recipes to the preset\)"):
        plugins.get("metric", "judge")(judge_ctx(judges=[]))
    with pytest.raises(UsageError, match="features"):
        plugins.get("metric", "judge")(judge_ctx(judges=[nn.Linear(4, 3)]))


class RandomJudge(nn.Module):
    """A fixed random two-layer judge on 4x4 images (float64, so batching cannot move a near-tie)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(16, 5, generator=g, dtype=torch.float64)
        self.h = torch.randn(5, 4, generator=g, dtype=torch.float64)

    def features(self, x: Tensor) -> Tensor:
        return torch.tanh(x.flatten(1).double() @ self.w)

    def head(self, f: Tensor) -> Tensor:
        return f @ self.h


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), data=st.data())
def test_judge_is_independent_of_batching(plugins, seed: int, data: st.DataObject) -> None:
    g = torch.Generator().manual_seed(seed)
    px, py = torch.rand(20, 1, 4, 4, generator=g), torch.randint(0, 4, (20,), generator=g)
    n = data.draw(st.integers(1, 24), label="n")
    x, y = torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 4, (n,), generator=g)
    cuts = data.draw(st.lists(st.integers(0, n), max_size=5), label="cuts")
    ev = RandomJudge(seed + 1)
    ctx = lambda: MetricContext(eval_logits=lambda b: ev.head(ev.features(b)), eval_features=ev.features,  # noqa: E731
                                private_images=px, private_labels=py, num_classes=4,
                                judges=[RandomJudge(seed + 2), RandomJudge(seed + 3)])
    whole = run_judge(plugins, x, y, ctx=ctx())
    assert run_judge(plugins, x, y, cuts=cuts, ctx=ctx()) == whole


# ------------------------------------------------------------------ set metrics against the attacked identities
SHAPE = (1, 16, 16)


class ToyFeatures(nn.Module):
    """A fixed random 8-d tanh feature map on 16x16 images (evaluation model and stand-in Inception)."""

    def __init__(self, dim: int = 8, embed: int | None = None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.proj = torch.randn(256, dim, generator=g, dtype=torch.float64) / 8
        self.head_w = torch.randn(dim, 5, generator=g, dtype=torch.float64)
        self.embed = None if embed is None else torch.linalg.qr(torch.randn(embed, dim, generator=g,
                                                                           dtype=torch.float64))[0]

    def features(self, x: Tensor) -> Tensor:
        f = torch.tanh(x.flatten(1).double() @ self.proj)
        return f if self.embed is None else f @ self.embed.T

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def private_set() -> tuple[Tensor, Tensor]:
    """10 private images for each of the identities 0..4, around well-separated prototypes."""
    g = torch.Generator().manual_seed(1)
    protos = torch.rand((5, *SHAPE), generator=g)
    labels = torch.arange(5).repeat_interleave(10)
    return (protos[labels] + 0.2 * torch.randn((len(labels), *SHAPE), generator=g)).clamp(0, 1), labels


def set_metric(plugins, name: str, attacked, config=None) -> dict[str, float]:
    px, py = private_set()
    net = ToyFeatures()
    ctx = MetricContext(eval_logits=lambda x: net.features(x) @ net.head_w, eval_features=net.features,
                        private_images=px, private_labels=py, num_classes=5, attacked=attacked)
    metric = plugins.get("metric", name)(ctx, config)
    keep = py < 2  # the reconstructions: the private images of identities 0 and 1 themselves
    metric.update(px[keep], py[keep])
    return metric.compute()


@pytest.fixture
def stand_in_inception(tmp_path):
    (tmp_path / core_metrics.FID_WEIGHTS_FILE).write_bytes(b"not used: the loader is patched")
    net = ToyFeatures(embed=2048)
    with mock.patch.object(core_metrics, "load_fid_inception", lambda path, device: net):
        yield str(tmp_path)


def test_reference_images_are_the_attacked_identities(plugins) -> None:
    px, py = private_set()
    ctx = MetricContext(eval_logits=lambda x: x, eval_features=lambda x: x.flatten(1), private_images=px,
                        private_labels=py, num_classes=5, attacked=torch.tensor([1, 0]))
    assert torch.equal(core_metrics.reference_images(ctx), px[py < 2])
    assert torch.equal(core_metrics.reference_eval_features(ctx), px[py < 2].flatten(1).double())
    ctx.attacked = None
    assert core_metrics.reference_images(ctx) is px


def test_fid_kid_prdc_compare_with_the_attacked_identities_only(plugins, stand_in_inception) -> None:
    weights = {"weights": stand_in_inception}
    attacked = torch.tensor([0, 1])
    for name, cfg in [("fid", weights), ("fid-eval", None)]:
        key = name.replace("-", "_")
        own = set_metric(plugins, name, attacked, cfg)[key]
        every = set_metric(plugins, name, None, cfg)[key]
        assert own == pytest.approx(0.0, abs=1e-9), name
        assert every > 0.1, name
    # KID: the metric's seeded subset draws (20 of each set) redone against the expected reference set
    kid_cfg = {**weights, "subsets": 3}
    px, py = private_set()
    feats = ToyFeatures(embed=2048).features
    rec = feats(px[py < 2])
    for att, ref in [(attacked, feats(px[py < 2])), (None, feats(px))]:
        g, vals = torch.Generator().manual_seed(0), []
        for _ in range(3):
            ix, iy = torch.randperm(len(rec), generator=g)[:20], torch.randperm(len(ref), generator=g)[:20]
            vals.append(core_metrics.polynomial_mmd_unbiased(rec[ix], ref[iy]))
        assert set_metric(plugins, "kid", att, kid_cfg)["kid"] == pytest.approx(sum(vals) / 3, rel=1e-9)
    assert set_metric(plugins, "kid", attacked, kid_cfg)["kid"] < 0.3 * set_metric(plugins, "kid", None, kid_cfg)["kid"]
    for cfg in [None, {**weights, "features": "inception"}]:
        own, every = set_metric(plugins, "prdc", attacked, cfg), set_metric(plugins, "prdc", None, cfg)
        assert own["coverage"] == 1.0 and own["recall"] == 1.0
        # against every identity, most of the 30 private images of identities 2-4 are neither covered nor recalled
        assert every["coverage"] < 0.6 and every["recall"] < 0.8
    # an attacked identity without private images adds nothing; none with any: no reference, NaN
    assert set_metric(plugins, "fid-eval", torch.tensor([0, 1, 7]), None)["fid_eval"] == pytest.approx(0.0, abs=1e-9)
    assert set_metric(plugins, "fid-eval", torch.tensor([7]), None)["fid_eval"] != set_metric(
        plugins, "fid-eval", torch.tensor([7]), None)["fid_eval"]


# ------------------------------------------------------------------ the preset judges
def test_digits_preset_judges_train_well_above_chance(plugins) -> None:
    from invertkit.core.catalog import load_catalog
    from invertkit.core.interfaces.target import split_classifier
    from invertkit.core.zoo.judges import trained_judges
    from invertkit.core.zoo.scenario import fingerprint, load_split

    preset = load_catalog().preset("digits")
    assert len(preset.judges) >= 2
    split = load_split(plugins, preset)
    data_key = fingerprint(*split.private_train, *split.private_test)
    nets, facts, keys = trained_judges(plugins, preset, split, data_key, "digits")
    assert len(nets) == len(facts) == len(keys) == len(preset.judges) and len(set(keys)) == len(keys)
    x, y = split.private_test
    chance = 1 / split.num_classes
    for net, f, recipe in zip(nets, facts, preset.judges):
        assert split_classifier(net) is not None and f["arch"] == recipe.arch
        with torch.no_grad():
            acc = (net(x).argmax(1) == y).double().mean().item()
        assert acc == pytest.approx(f["test_acc"]) and acc > max(0.9, 3 * chance)
    # the second call loads from the cache
    again, facts2, keys2 = trained_judges(plugins, preset, split, data_key, "digits")
    assert keys2 == keys and facts2 == facts
    # the metric on real private test images with the trained judges: they are recognised and nearest
    ctx = MetricContext(eval_logits=nets[0], eval_features=nets[0].features, private_images=split.private_train[0],
                        private_labels=split.private_train[1], num_classes=split.num_classes, judges=nets)
    metric = plugins.get("metric", "judge")(ctx)
    metric.update(x, y)
    got = metric.compute()
    assert got["judge_acc"] > 0.9 and got["judge_agree"] > 0.9
    assert got["nn_feat_acc"] > 0.9 and got["nn_pixel_acc"] > 0.9 and got["adversarial_rate"] < 0.05
