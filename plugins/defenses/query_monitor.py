"""``query-monitor``: a stateful API defense that watches the query stream and throttles (or refuses) an
inversion-like one.

Detectors (each query row is looked at once, in arrival order; the state belongs to one defended target, i.e.
one client's stream):

* **near-duplicate** — the stateful detection of Chen, Carlini and Wagner, "Stateful Detection of Black-Box
  Adversarial Attacks" (AsiaCCS 2020 workshop SPAI, https://arxiv.org/abs/1907.05587): optimisation-based
  attacks query long runs of tiny variations of the same image. Each row (average-pooled to at most
  16x16 per channel and flattened) is compared with the last ``history`` rows (those of its own batch
  included); its score is the mean RMS pixel distance to its ``k`` nearest predecessors, and it is
  *suspicious* when that is below ``threshold``. The stream is flagged when at least ``min_fraction`` of the
  last ``window`` rows are suspicious (and at least ``window`` rows were seen). GMI's iterates move by a
  learning-rate step per query and NES samples a ``sigma``-ball around its latent, so both score ~0;
  distinct natural images score far above (on digits: 0.00-0.02 for GMI/NES streams, >= 0.1 for the private
  test images, which are sorted by class — see tests/test_defenses_more.py).
* **climb** — a class-conditional confidence climb (the signature of inversion; an addition of invertkit,
  not from a paper): over the last ``window`` rows, at least ``concentration`` of them are predicted as one
  class and the mean top-1 confidence of the newer half exceeds that of the older half by ``min_rise``.

Once flagged, the stream stays flagged (Chen et al. ban the account). ``action = "throttle"`` then answers
every query with the one-hot of the undefended label (``probs``/``topk``; ``label`` is unchanged) and a zero
gradient; ``"refuse"`` raises :class:`~invertkit.core.errors.QueryBudgetExceeded` with the reason (nothing
is answered). Until flagged, the target's answers are released unchanged (exact gradients).

Capabilities: those given minus ``logits``, ``features`` and ``weights`` (they would bypass the monitor);
nothing is added. The strength is ``threshold`` (detection sensitivity: larger flags sooner, and risks
flagging benign streams of similar images).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from invertkit.core.errors import QueryBudgetExceeded
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.capability import Capabilities, Capability
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.defense import Defense, DefenseContext, WrappedTarget, filtered_capabilities
from invertkit.core.interfaces.target import TargetModel

C = Capability
#: queries are average-pooled to at most this many pixels per side before distances are taken
POOL = 16


class StreamState:
    """The detector state of one query stream."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.history: Tensor | None = None  # (<= history, D) pooled past queries
        self.suspicious: list[bool] = []  # last `window` near-duplicate verdicts
        self.labels: list[int] = []  # last `window` predicted labels
        self.conf: list[float] = []  # last `window` top-1 confidences
        self.seen = 0
        self.flagged_at: int | None = None
        self.flagged_by: str | None = None
        self.min_score: float = float("inf")

    @staticmethod
    def embed(x: Tensor) -> Tensor:
        x = x.detach().float()
        if x.shape[-1] > POOL or x.shape[-2] > POOL:
            x = F.adaptive_avg_pool2d(x, (min(POOL, x.shape[-2]), min(POOL, x.shape[-1])))
        return x.reshape(len(x), -1).cpu()

    def near_duplicate_scores(self, e: Tensor) -> Tensor:
        """Mean RMS distance of each row to its ``k`` nearest predecessors (inf when it has none)."""
        cfg = self.cfg
        past = self.history if self.history is not None else e[:0]
        pool = torch.cat([past, e])
        d = torch.cdist(e, pool) / (e.shape[1] ** 0.5)  # RMS pixel distance
        n_past, n = len(past), len(e)
        # row i may only look at the history and at rows j < i of its own batch
        later = torch.arange(n)[:, None] <= torch.arange(n)[None, :]
        d[:, n_past:] = d[:, n_past:].masked_fill(later, float("inf"))
        k = min(int(cfg.k), d.shape[1])
        if k == 0:
            return torch.full((n,), float("inf"))
        nearest = torch.topk(d, k, dim=1, largest=False).values
        counts = torch.isfinite(nearest).sum(1)
        score = torch.where(counts >= k, nearest.mean(1), torch.full((n,), float("inf")))
        return score

    def observe(self, x: Tensor, probs: Tensor | None, labels: Tensor | None) -> None:
        """Update the detectors with a batch (before it is answered)."""
        if self.flagged_at is not None:
            self.seen += len(x)
            return
        cfg = self.cfg
        e = self.embed(x)
        scores = self.near_duplicate_scores(e)
        finite = scores[torch.isfinite(scores)]
        if len(finite):
            self.min_score = min(self.min_score, float(finite.min()))
        self.history = torch.cat([self.history, e])[-int(cfg.history):] if self.history is not None else e[-int(cfg.history):]
        w = int(cfg.window)
        for i in range(len(x)):
            self.seen += 1
            self.suspicious.append(bool(scores[i] < cfg.threshold))
            if labels is not None:
                self.labels.append(int(labels[i]))
            if probs is not None:
                self.conf.append(float(probs[i].max()))
            self.suspicious, self.labels, self.conf = self.suspicious[-w:], self.labels[-w:], self.conf[-w:]
            if self.flagged_at is None:
                self._check(w)

    def _check(self, w: int) -> None:
        cfg = self.cfg
        if "near-duplicate" in cfg.detectors and len(self.suspicious) >= w:
            if sum(self.suspicious) >= cfg.min_fraction * w:
                self.flagged_at, self.flagged_by = self.seen, "near-duplicate"
                return
        if "climb" in cfg.detectors and len(self.labels) >= w and len(self.conf) >= w:
            top = max(set(self.labels), key=self.labels.count)
            if self.labels.count(top) >= cfg.concentration * w:
                half = w // 2
                older = sum(self.conf[:half]) / max(1, half)
                newer = sum(self.conf[half:]) / max(1, w - half)
                if newer - older >= cfg.min_rise:
                    self.flagged_at, self.flagged_by = self.seen, "climb"

    def describe(self) -> dict[str, Any]:
        return {"queries": self.seen, "flagged_at": self.flagged_at, "flagged_by": self.flagged_by,
                "min_near_duplicate_score": None if self.min_score == float("inf") else round(self.min_score, 5)}


class MonitoredTarget(WrappedTarget):
    """A target whose query stream is watched by a :class:`QueryMonitor`."""

    defense: "QueryMonitor"

    def __init__(self, inner: TargetModel, defense: "QueryMonitor", *, adaptive: bool = False) -> None:
        super().__init__(inner, defense, adaptive=adaptive)
        self.state = StreamState(defense.config)

    @property
    def flagged(self) -> bool:
        return self.state.flagged_at is not None

    def _refuse(self) -> None:
        s = self.state
        self.exhausted = True  # the bench's record says the attack was cut off here
        raise QueryBudgetExceeded(
            f"target '{self.name}': query-monitor flagged this stream as inversion-like ({s.flagged_by} detector, "
            f"after {s.flagged_at} queries); further queries are refused"
        )

    def _watched(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        if self.flagged and self.defense.config.action == "refuse":
            self._refuse()
        p = self._undefended(x)
        y = p.detach().argmax(dim=1) if p is not None else self._inner.label(x)
        self.state.observe(x, p.detach() if p is not None else None, y)
        if self.flagged and self.defense.config.action == "refuse":
            self._refuse()
        return p, y

    def _released(self, x: Tensor) -> Tensor:
        p, y = self._watched(x)
        assert p is not None  # probs/topk are only exposed when the wrapped target has one of them
        if not self.flagged:
            return p
        one_hot = F.one_hot(y, self.num_classes).to(p.dtype)
        return one_hot + 0.0 * p  # throttled: the label only, and a zero gradient

    def _label(self, x: Tensor) -> Tensor:
        _, y = self._watched(x)
        return y


class QueryMonitor(Defense):
    """Watch the query stream; throttle or refuse once it looks like an inversion attack."""

    class Config(ComponentConfig):
        threshold: float = Field(
            0.05,
            ge=0.0,
            description="A query is a near-duplicate when the mean RMS pixel distance (images in [0, 1]) to its k "
            "nearest earlier queries is below this (the strength: larger is more sensitive).",
        )
        k: int = Field(5, ge=1, description="Nearest earlier queries averaged in the near-duplicate score.")
        history: int = Field(4096, ge=1, description="Earlier queries kept for the near-duplicate search.")
        window: int = Field(200, ge=2, description="Rows over which the detectors decide.")
        min_fraction: float = Field(
            0.5, gt=0.0, le=1.0, description="Flag when at least this fraction of the window is near-duplicates."
        )
        concentration: float = Field(
            0.9, gt=0.0, le=1.0, description="Climb detector: fraction of the window predicted as one class."
        )
        min_rise: float = Field(
            0.2, gt=0.0, le=1.0,
            description="Climb detector: rise of the mean top-1 confidence from the older to the newer half of the "
            "window.",
        )
        detectors: list[Literal["near-duplicate", "climb"]] = Field(
            default_factory=lambda: ["near-duplicate", "climb"], description="The detectors that may flag a stream."
        )
        action: Literal["throttle", "refuse"] = Field(
            "throttle",
            description="After flagging: 'throttle' answers with the one-hot label (zero gradient); 'refuse' raises "
            "QueryBudgetExceeded.",
        )

    name: ClassVar[str] = "query-monitor"
    threat_model: ClassVar[str] = "API monitoring"
    kind = "output"
    summary: ClassVar[str] = (
        "Stateful stream monitor (near-duplicate k-NN distances, class-conditional confidence climbs); once "
        "flagged, answers label-only or refuses."
    )
    paper: ClassVar[str] = "https://arxiv.org/abs/1907.05587"
    gradient: ClassVar[str] = "exact until flagged, then none"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.streams: list[MonitoredTarget] = []

    filters_api: ClassVar[bool] = True

    def capabilities(self, given: Capabilities) -> Capabilities:
        return filtered_capabilities(given)

    def apply(self, target: TargetModel, ctx: DefenseContext | None = None) -> TargetModel:
        monitored = MonitoredTarget(target, self, adaptive=bool(ctx is not None and ctx.adaptive))
        self.streams.append(monitored)
        return monitored

    def report(self) -> dict[str, Any]:
        return {"streams": [s.state.describe() for s in self.streams]}


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(QueryMonitor)
