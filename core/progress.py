"""Progress of long steps (cells of a bench, target/prior training, long attacks), as people expect it.

* On a terminal: one rich live display, a bar per running step with its count, elapsed time and ETA; steps
  nest (the bench's bar over cells stays while a cell trains a prior).
* Not a terminal (a log file, CI, a pipe): plain lines on stderr, at the start of a step, about every tenth of
  it (at most one line every ``PLAIN_EVERY_S`` seconds) and at its end, each with the rate and the ETA.
* ``--quiet`` (:func:`set_quiet`): nothing but errors and warnings.

Everything goes to stderr; stdout keeps what a command is asked for (tables, file names, JSON). User strings
are printed as plain text, never read as rich markup.

Use::

    with progress.task("training prior 'wgan-gp'", total=steps, unit="step") as t:
        for step in range(steps):
            ...
            t.advance(1, info=f"loss {loss:.3f}")
    progress.note("wrote results.jsonl")
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PLAIN_EVERY_S = 10.0
_state: dict[str, Any] = {"quiet": False, "live": None, "depth": 0, "force_plain": False}


def set_quiet(quiet: bool) -> None:
    """``True``: no progress and no notes (``--quiet``)."""
    _state["quiet"] = bool(quiet)


def set_plain(plain: bool) -> None:
    """``True``: plain lines even on a terminal (tests, ``NO_COLOR``-style logs)."""
    _state["force_plain"] = bool(plain)


def quiet() -> bool:
    return bool(_state["quiet"])


def interactive() -> bool:
    """Whether progress shows as live bars (stderr is a terminal and plain lines are not forced)."""
    return not _state["force_plain"] and sys.stderr.isatty()


def _fmt_s(s: float) -> str:
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def note(msg: str) -> None:
    """One line of information on stderr (above the bars on a terminal); silent under ``--quiet``."""
    if not _state["quiet"]:
        warn(msg)


def warn(msg: str) -> None:
    """One line on stderr that ``--quiet`` keeps (a warning, a damaged cache entry), above the bars on a terminal."""
    live = _state["live"]
    if live is not None:
        live.console.print(msg, markup=False, highlight=False, soft_wrap=True)
    else:
        print(msg, file=sys.stderr, flush=True)


class Task:
    """One step with a known (or unknown, ``total=None``) amount of work; see :func:`task`."""

    def __init__(self, label: str, total: int | None, unit: str) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.info = ""
        self.t0 = time.perf_counter()
        self._last_line = self.t0
        self._last_frac = 0.0
        self._rich_id: Any = None

    def eta(self) -> float | None:
        if not self.total or self.done <= 0:
            return None
        el = time.perf_counter() - self.t0
        return el / self.done * (self.total - self.done)

    def line(self, final: bool = False) -> str:
        el = time.perf_counter() - self.t0
        if final:
            return f"{self.label}: done, {self.done} {self.unit}s in {_fmt_s(el)}" + (f" ({self.info})" if self.info else "")
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        eta = self.eta()
        tail = f", ETA {_fmt_s(eta)}" if eta is not None else ""
        return f"{self.label}: {count} {self.unit}s, {_fmt_s(el)}{tail}" + (f" ({self.info})" if self.info else "")

    def advance(self, n: int = 1, *, info: str | None = None) -> None:
        self.done += n
        if info is not None:
            self.info = info
        if _state["quiet"]:
            return
        live = _state["live"]
        if live is not None and self._rich_id is not None:
            live.update(self._rich_id, advance=n, info=self.info)
            return
        now = time.perf_counter()
        frac = self.done / self.total if self.total else 0.0
        if (self.total and frac - self._last_frac >= 0.1 and now - self._last_line >= 1.0) or \
                now - self._last_line >= PLAIN_EVERY_S:
            self._last_line, self._last_frac = now, frac
            print(self.line(), file=sys.stderr, flush=True)


@contextmanager
def task(label: str, total: int | None = None, unit: str = "step") -> Iterator[Task]:
    """A step of work: a bar on a terminal, plain lines elsewhere, nothing under ``--quiet``."""
    t = Task(label, total, unit)
    if _state["quiet"]:
        yield t
        return
    started_live = False
    if interactive():
        if _state["live"] is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            live = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            TextColumn("{task.fields[info]}", markup=False),
                            console=Console(stderr=True), transient=False)
            live.start()
            _state["live"] = live
            started_live = True
        t._rich_id = _state["live"].add_task(label, total=total, info="")
    else:
        print(f"{label}: started" + (f" ({total} {unit}s)" if total else ""), file=sys.stderr, flush=True)
    _state["depth"] += 1
    ok = False
    try:
        yield t
        ok = True
    finally:
        _state["depth"] -= 1
        live = _state["live"]
        if live is not None and t._rich_id is not None:
            live.remove_task(t._rich_id)
            live.console.print(t.line(final=True) if ok else f"{t.label}: stopped after {t.done} {t.unit}s",
                               markup=False, highlight=False)
            if started_live:
                live.stop()
                _state["live"] = None
        elif not ok:
            print(f"{t.label}: stopped after {t.done} {t.unit}s", file=sys.stderr, flush=True)
        else:
            print(t.line(final=True), file=sys.stderr, flush=True)


def callback(t: Task):  # noqa: ANN201
    """Adapter for the ``progress(done, total, loss)`` callbacks of the training loops: advances ``t`` to
    ``done`` and shows the loss."""

    def cb(done: int, total: int, loss: float) -> None:
        if t.total is None:
            t.total = total
        t.advance(max(0, done - t.done), info=f"loss {loss:.4g}")

    return cb
