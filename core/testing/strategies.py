"""Hypothesis strategies for invertkit's types.

Everything returns torch tensors on the CPU. Probability matrices are ``float32`` rows that are valid
distributions (finite, non-negative, summing to one within float error) and deliberately include the
awkward cases: exact and near ties, uniform rows, one-hot rows and peaked rows whose small entries underflow
to exactly zero.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor, nn

from invertkit.core.interfaces.capability import MODEL, Capabilities
from invertkit.core.interfaces.target import TorchTarget
from invertkit.core.zoo.arch import BodyHead

__all__ = [
    "ROW_KINDS",
    "TinyClassifier",
    "TinyFlatClassifier",
    "capability_sets",
    "image_batches",
    "make_tiny_classifier",
    "make_tiny_target",
    "prob_batches",
    "prob_rows",
    "seeds",
    "small_torch_targets",
]

#: the shapes of probability rows :func:`prob_rows` draws
ROW_KINDS: tuple[str, ...] = ("random", "near-tie", "peaked", "uniform", "one-hot", "two-way-tie")


def _value(draw: Any, spec: Any, default: st.SearchStrategy[Any]) -> Any:
    """``spec`` may be a plain value, a strategy, or ``None`` (use ``default``)."""
    if spec is None:
        return draw(default)
    if isinstance(spec, st.SearchStrategy):
        return draw(spec)
    return spec


def seeds() -> st.SearchStrategy[int]:
    return st.integers(min_value=0, max_value=2**31 - 1)


def capability_sets(*, min_size: int = 0, within: Capabilities | None = None) -> st.SearchStrategy[Capabilities]:
    """Frozensets of :class:`Capability` (any subset of ``within``, by default of what a model can expose: all
    but ``update``, which only a training protocol's view holds)."""
    pool = sorted(within if within is not None else MODEL, key=lambda c: c.value)
    return st.frozensets(st.sampled_from(pool), min_size=min_size) if pool else st.just(frozenset())


@st.composite
def prob_rows(draw: Any, num_classes: int | st.SearchStrategy[int] | None = None) -> Tensor:
    """One probability row, shape ``(num_classes,)``, ``float32``."""
    k = int(_value(draw, num_classes, st.integers(min_value=2, max_value=12)))
    kind = draw(st.sampled_from(ROW_KINDS))
    if kind == "one-hot":
        row = torch.zeros(k, dtype=torch.float32)
        row[draw(st.integers(0, k - 1))] = 1.0
        return row
    if kind == "uniform":
        return torch.full((k,), 1.0 / k, dtype=torch.float32)
    finite = st.floats(min_value=-8.0, max_value=8.0, allow_nan=False, allow_infinity=False)
    logits = torch.tensor(draw(st.lists(finite, min_size=k, max_size=k)), dtype=torch.float64)
    if kind in ("near-tie", "two-way-tie") and k >= 2:
        i, j = draw(st.lists(st.integers(0, k - 1), min_size=2, max_size=2, unique=True))
        top = float(logits.max()) + draw(st.floats(min_value=0.0, max_value=3.0))
        gap = 0.0 if kind == "two-way-tie" else draw(st.sampled_from([1e-7, 1e-5, 1e-3, 1e-2]))
        logits[i], logits[j] = top, top - gap
    elif kind == "peaked":
        logits[draw(st.integers(0, k - 1))] += draw(st.floats(min_value=15.0, max_value=120.0))
    row = torch.softmax(logits, dim=0).to(torch.float32)
    return row / row.sum()


@st.composite
def prob_batches(
    draw: Any,
    n: int | st.SearchStrategy[int] | None = None,
    k: int | st.SearchStrategy[int] | None = None,
) -> Tensor:
    """A ``(n, k)`` ``float32`` matrix whose rows are probability distributions (see :func:`prob_rows`)."""
    rows = int(_value(draw, n, st.integers(min_value=1, max_value=6)))
    classes = int(_value(draw, k, st.integers(min_value=2, max_value=12)))
    return torch.stack([draw(prob_rows(classes)) for _ in range(rows)])


@st.composite
def image_batches(
    draw: Any,
    shape: tuple[int, int, int] | st.SearchStrategy[tuple[int, int, int]] = (1, 8, 8),
    n: int | st.SearchStrategy[int] | None = None,
) -> Tensor:
    """A ``(n, C, H, W)`` ``float32`` batch in ``[0, 1]``: uniform noise, constant, or binary images."""
    c, h, w = _value(draw, shape, st.just((1, 8, 8)))
    rows = int(_value(draw, n, st.integers(min_value=1, max_value=4)))
    kind = draw(st.sampled_from(("noise", "zeros", "ones", "binary")))
    g = torch.Generator().manual_seed(draw(seeds()))
    if kind == "zeros":
        return torch.zeros(rows, c, h, w)
    if kind == "ones":
        return torch.ones(rows, c, h, w)
    x = torch.rand((rows, c, h, w), generator=g)
    return (x > 0.5).float() if kind == "binary" else x


# ------------------------------------------------------------------------ tiny models and targets
class TinyClassifier(BodyHead):
    """A linear-tanh-linear classifier with ``features(x)`` and ``head(f)``, so it is splittable (FEATURES)."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], hidden: int = 16) -> None:
        super().__init__()
        c, h, w = input_shape
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.Tanh())
        self.fc = nn.Linear(hidden, num_classes)


class TinyFlatClassifier(nn.Module):
    """The same network without ``features``/``head``: not splittable, so no FEATURES capability."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], hidden: int = 16) -> None:
        super().__init__()
        c, h, w = input_shape
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def make_tiny_classifier(
    seed: int = 0,
    *,
    num_classes: int = 5,
    input_shape: tuple[int, int, int] = (1, 8, 8),
    hidden: int = 16,
    splittable: bool = True,
    scale: float = 2.0,
) -> nn.Module:
    """A random-init tiny classifier, a pure function of ``seed`` (the global RNG is left untouched).

    ``scale`` multiplies the weights so the outputs are not all near-uniform.
    """
    cls = TinyClassifier if splittable else TinyFlatClassifier
    module = cls(num_classes, tuple(input_shape), hidden)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p.shape[1] if p.dim() > 1 else p.shape[0]
            p.copy_(torch.randn(p.shape, generator=g) * scale / fan_in**0.5)
    return module.eval()


def make_tiny_target(
    seed: int = 0,
    *,
    capabilities: Capabilities | None = None,
    budget: int | None = None,
    num_classes: int = 5,
    input_shape: tuple[int, int, int] = (1, 8, 8),
    splittable: bool = True,
    name: str = "tiny",
) -> TorchTarget:
    """A :class:`TorchTarget` over :func:`make_tiny_classifier` (white-box unless ``capabilities`` is given)."""
    module = make_tiny_classifier(seed, num_classes=num_classes, input_shape=input_shape, splittable=splittable)
    return TorchTarget(
        module,
        num_classes=num_classes,
        input_shape=input_shape,
        capabilities=capabilities,
        budget=budget,
        name=name,
    )


@st.composite
def small_torch_targets(
    draw: Any,
    *,
    capabilities: Capabilities | st.SearchStrategy[Capabilities] | None = None,
    budget: int | None | st.SearchStrategy[int | None] = None,
    num_classes: int | st.SearchStrategy[int] | None = None,
    input_shape: tuple[int, int, int] | st.SearchStrategy[tuple[int, int, int]] | None = None,
    splittable: bool | st.SearchStrategy[bool] = True,
) -> TorchTarget:
    """A :class:`TorchTarget` over a tiny random classifier: seed, capability subset and budget are drawn
    (pass plain values or strategies to pin or narrow them)."""
    seed = draw(seeds())
    caps = _value(draw, capabilities, capability_sets())
    limit = _value(draw, budget, st.none() | st.integers(min_value=0, max_value=40))
    k = int(_value(draw, num_classes, st.integers(min_value=2, max_value=8)))
    shape = _value(draw, input_shape, st.sampled_from([(1, 8, 8), (3, 4, 4), (1, 5, 7)]))
    split = bool(_value(draw, splittable, st.booleans()))
    return make_tiny_target(
        seed, capabilities=frozenset(caps), budget=limit, num_classes=k, input_shape=tuple(shape), splittable=split
    )
