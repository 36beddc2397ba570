"""``core.optim``: the shared optimisation loop, the NES gradient estimator and ``batched``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from invertkit.core.errors import NonFiniteError
from invertkit.core.optim import batched, nes_gradient, optimise
from invertkit.core.testing.contracts import torch_threads



def quadratic(n: int = 6, d: int = 5, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample ``0.5 * sum_j a_ij (p_ij - c_ij)^2`` with curvatures ``a`` in [0.5, 2]: (init, a, c)."""
    g = torch.Generator().manual_seed(seed)
    a = 0.5 + 1.5 * torch.rand((n, d), generator=g, dtype=torch.float64)
    c = torch.randn((n, d), generator=g, dtype=torch.float64)
    init = torch.randn((n, d), generator=g, dtype=torch.float64) * 3
    return init, a, c


def quad_objective(a: Tensor, c: Tensor):  # noqa: ANN201
    def objective(p: Tensor, idx: Tensor) -> Tensor:
        return 0.5 * (a[idx] * (p - c[idx]) ** 2).sum(1)

    return objective


# ----------------------------------------------------------------------------------- convergence
@pytest.mark.parametrize(
    ("kind", "lr", "iterations"),
    [("sgd", 0.1, 300), ("nesterov", 0.1, 300), ("adam", 0.05, 1500)],
)
def test_converges_on_a_convex_quadratic(kind: str, lr: float, iterations: int) -> None:
    init, a, c = quadratic()
    start = quad_objective(a, c)(init, torch.arange(len(init)))
    out = optimise(init, iterations=iterations, lr=lr, optimizer=kind, objective=quad_objective(a, c))
    assert out.params.shape == init.shape and not out.params.requires_grad
    assert torch.allclose(out.params, c, atol=1e-3), (out.params - c).abs().max()
    assert bool((out.loss < 1e-5 * start).all())
    assert out.iterations.tolist() == [iterations] * len(init)
    # the input is left alone
    assert torch.equal(init, quadratic()[0])


def test_unknown_optimizer_and_objective_arguments() -> None:
    init, a, c = quadratic()
    with pytest.raises(ValueError, match="unknown optimizer"):
        optimise(init, iterations=1, lr=0.1, optimizer="rmsprop", objective=quad_objective(a, c))
    with pytest.raises(ValueError, match="exactly one"):
        optimise(init, iterations=1, lr=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        optimise(init, iterations=1, lr=0.1, objective=quad_objective(a, c), estimate=lambda p, i: (p.sum(1), p))


# ------------------------------------------------------------------------------------- keep_best
class Recorder:
    """Wraps an objective and records every (index, params, loss) it was evaluated at."""

    def __init__(self, objective) -> None:  # noqa: ANN001
        self.objective = objective
        self.calls: list[tuple[Tensor, Tensor, Tensor]] = []

    def __call__(self, p: Tensor, idx: Tensor) -> Tensor:
        loss = self.objective(p, idx)
        self.calls.append((idx.clone(), p.detach().clone(), loss.detach().clone()))
        return loss

    def history(self, i: int) -> tuple[list[Tensor], list[float]]:
        ps, ls = [], []
        for idx, p, loss in self.calls:
            rows = (idx == i).nonzero().flatten()
            if len(rows):
                ps.append(p[rows[0]])
                ls.append(float(loss[rows[0]]))
        return ps, ls


def test_keep_best_returns_the_best_seen() -> None:
    # curvature 0.5 converges under lr 1.5, curvature 1.9 diverges (|1 - 1.5 * 1.9| > 1): the loss first falls,
    # then grows, so the best iterate is neither the first nor the last
    n = 4
    a = torch.tensor([[0.5, 1.9]], dtype=torch.float64).repeat(n, 1)
    c = torch.zeros((n, 2), dtype=torch.float64)
    init = torch.stack([torch.full((n,), 10.0, dtype=torch.float64),
                        0.01 * torch.arange(1, n + 1, dtype=torch.float64)], dim=1)
    rec = Recorder(quad_objective(a, c))
    out = optimise(init, iterations=25, lr=1.5, optimizer="sgd", momentum=0.0, objective=rec, keep_best=True)
    for i in range(len(init)):
        ps, ls = rec.history(i)
        j = min(range(len(ls)), key=ls.__getitem__)
        assert float(out.loss[i]) == ls[j]
        assert torch.equal(out.params[i], ps[j])
        assert 0 < j < len(ls) - 1, f"sample {i}: the best iterate is step {j} of {len(ls)}; the test needs one inside"
    # without keep_best: the last iterate, and the loss last measured
    rec2 = Recorder(quad_objective(a, c))
    last = optimise(init, iterations=25, lr=1.5, optimizer="sgd", momentum=0.0, objective=rec2)
    for i in range(len(init)):
        _, ls = rec2.history(i)
        assert float(last.loss[i]) == ls[-1]
    assert not torch.equal(last.params, out.params)


# ------------------------------------------------------------------------------ early stopping
def _abs_objective(c: Tensor):  # noqa: ANN202
    """``|p - c|`` summed: with a large step the iterate oscillates around ``c`` and stops improving."""

    def objective(p: Tensor, idx: Tensor) -> Tensor:
        return (p - c[idx]).abs().sum(1)

    return objective


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam"])
def test_patience_stops_samples_individually_and_freezes_them(kind: str) -> None:
    n, d = 6, 3
    g = torch.Generator().manual_seed(2)
    c = torch.randn((n, d), generator=g, dtype=torch.float64)
    init = c + torch.linspace(0.05, 4.0, n, dtype=torch.float64)[:, None]  # different distances: different stops
    after_step: list[Tensor] = []

    def record(p: Tensor) -> Tensor:  # the projection sees every row after each step
        after_step.append(p.detach().clone())
        return p

    iterations = 200
    out = optimise(init, iterations=iterations, lr=0.3, optimizer=kind, momentum=0.9, objective=_abs_objective(c),
                   patience=4, project=record)
    ran = out.iterations.tolist()
    assert all(1 <= r < iterations for r in ran), ran
    assert len(set(ran)) > 1, f"all samples stopped together ({ran}); the test needs individual stops"
    assert len(after_step) == max(ran)
    for i, r in enumerate(ran):
        # where the sample was after its last step, it stays, although the others (and the momentum) go on
        assert torch.equal(out.params[i], after_step[r - 1][i]), f"sample {i} moved after stopping at step {r} ({kind})"
    # more iterations change nothing once every sample has stopped
    again = optimise(init, iterations=5 * iterations, lr=0.3, optimizer=kind, momentum=0.9,
                     objective=_abs_objective(c), patience=4)
    assert torch.equal(again.params, out.params) and torch.equal(again.iterations, out.iterations)


def test_stop_below_stops_and_a_projection_does_not_move_stopped_samples() -> None:
    # a non-idempotent projection (a contraction towards 0, as a denoising blur is) runs after every step: it
    # must not keep moving samples that have stopped, and neither must the momentum
    init, a, c = quadratic(n=5, d=4, seed=3)
    c = c + 2.0
    start = quad_objective(a, c)(init, torch.arange(5))
    threshold = float(start.median()) * 0.5
    projected: list[Tensor] = []

    def shrink(p: Tensor) -> Tensor:
        out = p * 0.999
        projected.append(out.detach().clone())
        return out

    out = optimise(init, iterations=300, lr=0.05, optimizer="sgd", momentum=0.9, objective=quad_objective(a, c),
                   stop_below=threshold, project=shrink)
    ran = out.iterations.tolist()
    assert all(r < 300 for r in ran) and len(set(ran)) > 1, ran
    assert bool((out.loss <= threshold).all())
    for i, r in enumerate(ran):
        assert torch.equal(out.params[i], projected[r - 1][i]), f"sample {i} moved after stopping at step {r}"


def test_stopped_samples_are_not_evaluated_again() -> None:
    init, a, c = quadratic(n=4, d=2, seed=4)
    rec = Recorder(quad_objective(a, c))
    out = optimise(init, iterations=100, lr=0.1, optimizer="sgd", momentum=0.0, objective=rec, stop_below=0.05)
    for i in range(4):
        _, ls = rec.history(i)
        assert len(ls) == int(out.iterations[i])
        assert ls[-1] <= 0.05 and all(v > 0.05 for v in ls[:-1])


# ------------------------------------------------------------------------------------ loss_scale
@pytest.mark.parametrize("scale", [1.0, 0.25, 1 / 60, 3.0])
def test_loss_scale_scales_the_step(scale: float) -> None:
    g = torch.Generator().manual_seed(5)
    w = torch.randn((3, 4), generator=g, dtype=torch.float64)
    init = torch.randn((3, 4), generator=g, dtype=torch.float64)

    def linear(p: Tensor, idx: Tensor) -> Tensor:
        return (p * w[idx]).sum(1)

    lr = 0.1
    out = optimise(init, iterations=1, lr=lr, optimizer="sgd", momentum=0.0, objective=linear, loss_scale=scale)
    assert torch.allclose(out.params, init - lr * scale * w, atol=1e-12, rtol=0)

    def estimate(p: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        return (p * w[idx]).sum(1), w[idx]

    est = optimise(init, iterations=1, lr=lr, optimizer="sgd", momentum=0.0, estimate=estimate, loss_scale=scale)
    assert torch.allclose(est.params, out.params, atol=1e-12, rtol=0)


def test_estimator_path_converges_and_only_sees_active_rows() -> None:
    init, a, c = quadratic(n=5, d=3, seed=6)
    seen: list[Tensor] = []

    def estimate(p: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        seen.append(idx.clone())
        return 0.5 * (a[idx] * (p - c[idx]) ** 2).sum(1), a[idx] * (p - c[idx])

    out = optimise(init, iterations=400, lr=0.1, optimizer="sgd", momentum=0.9, estimate=estimate, stop_below=1e-6)
    assert bool((out.loss <= 1e-6).all())
    assert torch.allclose(out.params, c, atol=1e-2)
    for i in range(5):
        assert sum(int((s == i).sum()) for s in seen) == int(out.iterations[i])


# ------------------------------------------------------------------------------------ non-finite
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_loss_raises(bad: float) -> None:
    init = torch.zeros(3, 2)

    def objective(p: Tensor, idx: Tensor) -> Tensor:
        loss = (p**2).sum(1) + 1.0
        return torch.where(idx == 1, loss * bad, loss)

    with pytest.raises(NonFiniteError):
        optimise(init, iterations=5, lr=0.1, objective=objective)

    def estimate(p: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        return torch.full((len(idx),), bad), torch.zeros_like(p)

    with pytest.raises(NonFiniteError):
        optimise(init, iterations=5, lr=0.1, estimate=estimate)


# ----------------------------------------------------------------------------------- nes_gradient
def test_nes_gradient_is_unbiased_on_a_linear_function() -> None:
    g = torch.Generator().manual_seed(7)
    n, d, pairs, sigma = 4, 8, 2000, 0.1
    w = torch.randn(d, generator=g, dtype=torch.float64)
    params = torch.randn((n, d), generator=g, dtype=torch.float64)
    calls: list[int] = []

    def f(z: Tensor) -> Tensor:
        calls.append(z.shape[0])
        return z @ w

    value, grad = nes_gradient(f, params, sigma=sigma, pairs=pairs, generator=torch.Generator().manual_seed(0))
    assert calls == [n * 2 * pairs], "f must be called once, on 2 * pairs probes per row"
    assert grad.shape == params.shape and value.shape == (n,)
    # antithetic pairs: the mean of the probes' values is exactly f(params) for a linear f
    assert torch.allclose(value, params @ w, atol=1e-9)
    cos = torch.nn.functional.cosine_similarity(grad, w.expand_as(grad), dim=1)
    assert bool((cos > 0.95).all()), cos
    # unbiased: averaging independent estimates gets closer to w
    many = torch.stack([
        nes_gradient(f, params, sigma=sigma, pairs=200, generator=torch.Generator().manual_seed(s))[1] for s in range(20)
    ]).mean(0)
    assert (many - w).norm(dim=1).max() < 0.1 * w.norm()
    # the estimate does not depend on sigma for a linear f (same directions, same generator seed)
    _, grad2 = nes_gradient(f, params, sigma=1.0, pairs=pairs, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(grad, grad2, atol=1e-9)


def test_nes_gradient_rows_are_independent_and_seeded() -> None:
    w = torch.tensor([1.0, -2.0, 0.5])

    def f(z: Tensor) -> Tensor:
        return (z**2) @ w

    p = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))
    a = nes_gradient(f, p, sigma=0.05, pairs=16, generator=torch.Generator().manual_seed(3))
    b = nes_gradient(f, p, sigma=0.05, pairs=16, generator=torch.Generator().manual_seed(3))
    c = nes_gradient(f, p, sigma=0.05, pairs=16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])


# ------------------------------------------------------------------------------------------ batched
@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300), batch_size=st.none() | st.integers(1, 400))
def test_batched_covers_range_exactly(n: int, batch_size: int | None) -> None:
    slices = batched(n, batch_size)
    covered = [i for sl in slices for i in range(n)[sl]]
    assert covered == list(range(n))
    assert all(sl.step in (None, 1) for sl in slices)
    if batch_size is None or batch_size >= n:
        assert len(slices) == 1
    else:
        assert all(sl.stop - sl.start <= batch_size for sl in slices)
        assert all(sl.stop - sl.start == batch_size for sl in slices[:-1])
        assert len(slices) == -(-n // batch_size)


def test_a_budget_ends_the_loop_with_what_it_has():
    """optimise() treats the target's refusal past its budget as a stopping rule: it returns the parameters it
    had (best, with keep_best) and says so, and the target's counter never passes the budget."""
    from invertkit.core.interfaces.target import TorchTarget
    from invertkit.core.optim import optimise

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    target = TorchTarget(net, num_classes=3, input_shape=(1, 2, 2), budget=25)
    y = torch.tensor([0, 1, 2, 0, 1])

    def cost(x, idx):  # noqa: ANN001, ANN202
        return -target.log_probs(x).gather(1, y[idx, None]).squeeze(1)

    out = optimise(torch.zeros(5, 1, 2, 2), iterations=100, lr=0.1, objective=cost, keep_best=True)
    assert out.exhausted and target.exhausted and target.queries == 25
    assert out.iterations.tolist() == [5] * 5 and bool(torch.isfinite(out.loss).all())
    free = optimise(torch.zeros(5, 1, 2, 2), iterations=3, lr=0.1,
                    objective=lambda x, idx: -net(x).log_softmax(1).gather(1, y[idx, None]).squeeze(1))
    assert not free.exhausted
