"""The bundled metrics against independent float64 numpy/scipy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from invertkit.core.interfaces.metric import MetricContext
from invertkit.plugins.metrics.attack_acc import AttackAccuracy
from invertkit.plugins.metrics.knn_dist import KNNDistance

try:
    from scipy.spatial.distance import cdist as _scipy_cdist
except ImportError:  # pragma: no cover - scipy is optional
    _scipy_cdist = None

SHAPE = (1, 8, 8)
PIXELS = 64
FEAT = 12

hsettings = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])



# ------------------------------------------------------------------------------------- references
def np_cdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if _scipy_cdist is not None:
        return _scipy_cdist(a, b, metric="euclidean")
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def np_topk_acc(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    order = np.argsort(-logits.astype(np.float64), axis=1, kind="stable")[:, :k]
    return float((order == labels[:, None]).any(axis=1).mean())


def np_knn(feats: np.ndarray, labels: np.ndarray, ref: np.ndarray, ref_labels: np.ndarray,
           squared: bool = True) -> float:
    """Mean over reconstructions (of identities that have private images) of the squared distance (the
    official calc_knn; ``squared=False``: the distance) to the nearest private image of the same identity."""
    d = np_cdist(feats.astype(np.float64), ref.astype(np.float64))
    if squared:
        d = d**2
    out = [d[i, ref_labels == y].min() for i, y in enumerate(labels) if (ref_labels == y).any()]
    return float(np.mean(out)) if out else math.nan


# ----------------------------------------------------------------------------- synthetic contexts
class LinearEval:
    """A fixed random evaluation model: ``features = tanh(x W1)``, ``logits = features W2 + b``, kept as
    float64 numpy arrays (the reference) and as float32 torch callables (what the metric sees)."""

    def __init__(self, num_classes: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w1 = rng.normal(size=(PIXELS, FEAT)) / math.sqrt(PIXELS) * 3
        self.w2 = rng.normal(size=(FEAT, num_classes)) * 2
        self.b = rng.normal(size=num_classes)
        self.num_classes = num_classes

    def np_features(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x.reshape(len(x), -1).astype(np.float64) @ self.w1)

    def np_logits(self, x: np.ndarray) -> np.ndarray:
        return self.np_features(x) @ self.w2 + self.b

    def features(self, x: Tensor) -> Tensor:
        return torch.tanh(x.flatten(1) @ torch.from_numpy(self.w1).float())

    def logits(self, x: Tensor) -> Tensor:
        return self.features(x) @ torch.from_numpy(self.w2).float() + torch.from_numpy(self.b).float()


def make_ctx(model: LinearEval, private: int = 40, seed: int = 1, missing: tuple[int, ...] = ()) -> MetricContext:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, model.num_classes, (private,), generator=g)
    for m in missing:  # identities without any private image
        labels[labels == m] = (m + 1) % model.num_classes
    return MetricContext(
        eval_logits=model.logits,
        eval_features=model.features,
        private_images=torch.rand((private, *SHAPE), generator=g),
        private_labels=labels,
        num_classes=model.num_classes,
    )


MODEL10 = LinearEval(10, seed=0)
CTX10 = make_ctx(MODEL10)


def logits_ctx(num_classes: int) -> MetricContext:
    """The evaluation 'model' is the identity: an image ``(N, 1, 1, K)`` *is* its logits."""
    return MetricContext(
        eval_logits=lambda x: x.flatten(1),
        eval_features=lambda x: x.flatten(1),
        private_images=torch.zeros((0, 1, 1, num_classes)),
        private_labels=torch.zeros(0, dtype=torch.long),
        num_classes=num_classes,
    )


@st.composite
def batches(draw, num_classes: int = 10, max_n: int = 24) -> tuple[Tensor, Tensor]:  # noqa: ANN001
    n = draw(st.integers(1, max_n))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["noise", "binary", "dark"]))
    x = torch.rand((n, *SHAPE), generator=g)
    if kind == "binary":
        x = (x > 0.5).float()
    elif kind == "dark":
        x = x * 0.1
    y = torch.randint(0, num_classes, (n,), generator=g)
    return x, y


def split_points(draw, n: int) -> list[int]:  # noqa: ANN001
    cuts = draw(st.lists(st.integers(0, n), max_size=6))
    return sorted({0, n, *cuts})


def feed(metric, x: Tensor, y: Tensor, points: list[int]) -> None:  # noqa: ANN001
    for lo, hi in zip(points[:-1], points[1:]):
        metric.update(x[lo:hi], y[lo:hi])


# -------------------------------------------------------------------------------------- attack-acc
def top(values: dict[str, float]) -> dict[str, float]:
    """The top-1/top-5 entries of attack-acc's result (it may report more keys)."""
    return {k: values[k] for k in ("acc@1", "acc@5")}


def test_attack_acc_hand_computed() -> None:
    # rows are the logits themselves; identities 2, 0, 4: top-1 hits once (row 0), top-5 of 6 classes misses
    # only row 2 (its label has the smallest logit)
    logits = torch.tensor([
        [0.1, 0.2, 0.9, 0.3, 0.4, 0.5],
        [0.6, 0.1, 0.2, 0.3, 0.4, 0.7],
        [0.5, 0.4, 0.3, 0.2, 0.05, 0.6],
    ])
    m = AttackAccuracy(logits_ctx(6))
    m.update(logits.view(3, 1, 1, 6), torch.tensor([2, 0, 4]))
    out = m.compute()
    assert set(out) == set(AttackAccuracy.keys)
    assert out["acc@1"] == pytest.approx(1 / 3) and out["acc@5"] == pytest.approx(2 / 3)


@hsettings
@given(data=st.data())
def test_attack_acc_matches_numpy_on_logits(data: st.DataObject) -> None:
    k = data.draw(st.integers(2, 12), label="classes")
    n = data.draw(st.integers(1, 30), label="n")
    # distinct logits per row (no ties: the reference and torch.topk then agree on the order)
    rows = [data.draw(st.permutations(range(k))) for _ in range(n)]
    logits = torch.tensor(rows, dtype=torch.float32) / k
    labels = torch.tensor(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    m = AttackAccuracy(logits_ctx(k))
    m.update(logits.view(n, 1, 1, k), labels)
    out = m.compute()
    assert out["acc@1"] == pytest.approx(np_topk_acc(logits.numpy(), labels.numpy(), 1), abs=1e-12)
    assert out["acc@5"] == pytest.approx(np_topk_acc(logits.numpy(), labels.numpy(), 5), abs=1e-12)
    if k <= 5:
        assert out["acc@5"] == 1.0


@hsettings
@given(data=st.data(), batch=batches())
def test_attack_acc_matches_numpy_and_ignores_batching(data: st.DataObject, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    ref_logits = MODEL10.np_logits(x.numpy())
    # the metric's own evaluation is float32: compare against the float64 reference where no decision is
    # within float error of a tie (top-1 vs 2nd, 5th vs 6th)
    srt = np.sort(ref_logits, axis=1)[:, ::-1]
    if np.any(srt[:, 0] - srt[:, 1] < 1e-4) or np.any(srt[:, 4] - srt[:, 5] < 1e-4):
        return
    whole = AttackAccuracy(CTX10)
    whole.update(x, y)
    expected = {"acc@1": np_topk_acc(ref_logits, y.numpy(), 1), "acc@5": np_topk_acc(ref_logits, y.numpy(), 5)}
    assert top(whole.compute()) == pytest.approx(expected, abs=1e-12)
    parts = AttackAccuracy(CTX10)
    feed(parts, x, y, split_points(data.draw, len(x)))
    got, want = parts.compute(), whole.compute()
    # the evaluation model's float32 logits of one row may differ in the last bits with the batch it ran in:
    # the decisions (top-1/top-5) are exact, the mean probability of the identity equal to float32 precision
    assert got.pop("eval_conf") == pytest.approx(want.pop("eval_conf"), rel=1e-5, abs=1e-7)
    assert got == want


def test_attack_acc_reset_and_empty() -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand((20, *SHAPE), generator=g), torch.randint(0, 10, (20,), generator=g)
    m = AttackAccuracy(CTX10)
    assert all(math.isnan(v) for v in top(m.compute()).values())
    m.update(x[:0], y[:0])  # an empty batch changes nothing
    assert all(math.isnan(v) for v in top(m.compute()).values())
    m.update(x, (y + 1) % 10)
    polluted = m.compute()
    m.reset()
    assert all(math.isnan(v) for v in top(m.compute()).values())
    m.update(x, y)
    fresh = AttackAccuracy(CTX10)
    fresh.update(x, y)
    assert m.compute() == fresh.compute()  # every accumulator was reset, whatever keys the metric reports
    assert top(m.compute()) != top(polluted)
    # exactly what the reference says for the true labels
    ref = MODEL10.np_logits(x.numpy())
    assert m.compute()["acc@1"] == pytest.approx(np_topk_acc(ref, y.numpy(), 1))


def test_attack_acc_accumulates_counts_not_batch_means() -> None:
    # a batch of 1 (all right) and a batch of 3 (all wrong): the pooled accuracy is 1/4, not the mean 1/2
    eye = torch.eye(4)
    m = AttackAccuracy(logits_ctx(4))
    m.update(eye[:1].view(1, 1, 1, 4), torch.tensor([0]))
    m.update(eye[1:].view(3, 1, 1, 4), torch.tensor([0, 0, 0]))
    assert m.compute()["acc@1"] == pytest.approx(0.25)


# ---------------------------------------------------------------------------------------- knn-dist
def knn_reference(ctx: MetricContext, model: LinearEval, x: Tensor, y: Tensor, squared: bool = True) -> float:
    return np_knn(model.np_features(x.numpy()), y.numpy(), model.np_features(ctx.private_images.numpy()),
                  ctx.private_labels.numpy(), squared)


class _Identity:
    """An evaluation model whose features are the flattened image (hand-computable distances)."""

    @staticmethod
    def features(x: Tensor) -> Tensor:
        return x.reshape(len(x), -1)


def test_knn_dist_is_the_official_squared_distance_by_hand() -> None:
    # private features of identity 0: (0, 0) and (3, 0); of identity 1: (0, 4)
    ref = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]).view(3, 1, 1, 2)
    ctx = MetricContext(eval_logits=lambda x: x.reshape(len(x), -1), eval_features=_Identity.features,
                        private_images=ref, private_labels=torch.tensor([0, 0, 1]), num_classes=2)
    x = torch.tensor([[1.0, 1.0], [3.0, 4.0]]).view(2, 1, 1, 2)
    y = torch.tensor([0, 1])
    # nearest same-identity private feature: (0, 0) at squared distance 2, (0, 4) at squared distance 9
    official = KNNDistance(ctx)
    official.update(x, y)
    assert official.compute()["knn_dist"] == pytest.approx((2.0 + 9.0) / 2)
    plain = KNNDistance(ctx, {"squared": False})
    plain.update(x, y)
    assert plain.compute()["knn_dist"] == pytest.approx((math.sqrt(2.0) + 3.0) / 2)
    assert KNNDistance.Config().squared is True


@hsettings
@given(batch=batches())
def test_knn_dist_unsquared_option_matches_scipy(batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    m = KNNDistance(CTX10, {"squared": False})
    m.update(x, y)
    assert m.compute()["knn_dist"] == pytest.approx(knn_reference(CTX10, MODEL10, x, y, squared=False),
                                                    rel=1e-5, abs=1e-6)


@hsettings
@given(data=st.data(), batch=batches())
def test_knn_dist_matches_scipy_and_ignores_batching(data: st.DataObject, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    whole = KNNDistance(CTX10)
    whole.update(x, y)
    got = whole.compute()["knn_dist"]
    expected = knn_reference(CTX10, MODEL10, x, y)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    parts = KNNDistance(CTX10)
    feed(parts, x, y, split_points(data.draw, len(x)))
    # (the features are float32 and a different batch size may round differently: float32 error, no more)
    assert parts.compute()["knn_dist"] == pytest.approx(got, rel=1e-6, abs=1e-9)


def test_knn_dist_identities_without_private_images_are_left_out() -> None:
    ctx = make_ctx(MODEL10, missing=(3, 7))
    assert not bool(((ctx.private_labels == 3) | (ctx.private_labels == 7)).any())
    g = torch.Generator().manual_seed(5)
    x = torch.rand((12, *SHAPE), generator=g)
    y = torch.tensor([3, 7, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    m = KNNDistance(ctx)
    m.update(x, y)
    assert m.compute()["knn_dist"] == pytest.approx(knn_reference(ctx, MODEL10, x, y), rel=1e-5)
    only_missing = KNNDistance(ctx)
    only_missing.update(x[:2], y[:2])
    assert math.isnan(only_missing.compute()["knn_dist"])


def test_knn_dist_private_images_are_at_distance_zero_and_reset() -> None:
    m = KNNDistance(CTX10)
    assert math.isnan(m.compute()["knn_dist"])
    m.update(CTX10.private_images[:15], CTX10.private_labels[:15])
    assert m.compute()["knn_dist"] == pytest.approx(0.0, abs=1e-5)
    m.reset()
    assert math.isnan(m.compute()["knn_dist"])
    # the wrong identity: the nearest image of *that* identity is somewhere else
    wrong = (CTX10.private_labels[:15] + 1) % 10
    present = torch.isin(wrong, CTX10.private_labels)
    m.update(CTX10.private_images[:15][present], wrong[present])
    assert m.compute()["knn_dist"] > 0.05
    assert m.compute()["knn_dist"] == pytest.approx(
        knn_reference(CTX10, MODEL10, CTX10.private_images[:15][present], wrong[present]), rel=1e-5)


def test_metrics_on_the_tiny_scenario(scenario) -> None:  # noqa: ANN001
    from invertkit.core.bench.runner import metric_context

    ctx = metric_context(scenario)
    x_test, y_test = scenario.split.private_test
    x, y = x_test[:40], y_test[:40]
    net = scenario.eval_net
    with torch.no_grad():
        logits = net(x).double().numpy()
        feats = net.features(x).double().numpy()
        ref = torch.cat([net.features(ctx.private_images[i : i + 256]) for i in range(0, len(ctx.private_images), 256)])
    acc = AttackAccuracy(ctx)
    feed(acc, x, y, [0, 7, 8, 40])
    out = acc.compute()
    assert out["acc@1"] == pytest.approx(np_topk_acc(logits, y.numpy(), 1))
    assert out["acc@1"] > 0.8  # held-out digits: the evaluation model knows them
    knn = KNNDistance(ctx)
    feed(knn, x, y, [0, 13, 40])
    expected = np_knn(feats, y.numpy(), ref.double().numpy(), ctx.private_labels.numpy())
    assert knn.compute()["knn_dist"] == pytest.approx(expected, rel=1e-5)
    # real digits are closer to the private data than uniform noise is
    noise = KNNDistance(ctx)
    noise.update(torch.rand((40, *scenario.image_shape), generator=torch.Generator().manual_seed(0)), y)
    assert noise.compute()["knn_dist"] > knn.compute()["knn_dist"]
