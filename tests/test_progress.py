"""core/progress: a Task's count, ETA and plain lines (off a terminal), the training callbacks' adapter,
``--quiet``, and the start/done lines a training prints in a log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from invertkit.core import progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    c = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", c)
    progress.set_plain(True)
    progress.set_quiet(False)
    try:
        yield c
    finally:
        progress.set_plain(False)
        progress.set_quiet(False)


def test_eta_is_the_mean_time_per_unit_times_what_is_left(clock: Clock) -> None:
    t = progress.Task("prior", total=100, unit="step")
    assert t.eta() is None  # nothing done yet: no estimate
    clock.now += 20
    t.done = 25
    assert t.eta() == pytest.approx(60.0)
    assert t.line() == "prior: 25/100 steps, 20s, ETA 1m00s"
    t.info = "loss 0.5"
    assert t.line().endswith(" (loss 0.5)")
    assert progress.Task("x", total=None, unit="cell").eta() is None


def test_plain_lines_start_every_tenth_and_done(clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    with progress.task("training target", total=20, unit="epoch") as t:
        for _ in range(20):
            clock.now += 2
            t.advance(1)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "training target: started (20 epochs)"
    assert lines[-1] == "training target: done, 20 epochs in 40s"
    middle = lines[1:-1]
    assert 5 <= len(middle) <= 10, middle  # about every tenth, never every step
    assert all("ETA" in line for line in middle), middle
    assert middle[0] == "training target: 2/20 epochs, 4s, ETA 36s"


def test_a_step_that_fails_says_where_it_stopped(clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError), progress.task("prior", total=10) as t:
        t.advance(3)
        raise RuntimeError("boom")
    assert capsys.readouterr().err.splitlines()[-1] == "prior: stopped after 3 steps"


def test_callback_follows_the_training_loops_done_total_loss(clock: Clock) -> None:
    with progress.task("prior", total=None) as t:
        cb = progress.callback(t)
        cb(50, 150, 0.25)
        assert (t.done, t.total, t.info) == (50, 150, "loss 0.25")
        cb(150, 150, 0.125)
        assert t.done == 150


def test_quiet_keeps_warnings_only(clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    progress.set_quiet(True)
    with progress.task("prior", total=10) as t:
        t.advance(10)
    progress.note("a note")
    progress.warn("warning: kept")
    assert capsys.readouterr().err == "warning: kept\n"


def test_a_prior_training_shows_start_and_done_lines(tiny_catalog, plugins, tmp_path,  # noqa: ANN001
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Prior training was silent for its whole length: in a log it now starts, counts its steps and ends."""
    from invertkit.core.zoo.scenario import load_split, trained_prior

    monkeypatch.setenv("INVERTKIT_CACHE", str(tmp_path / "cache"))
    progress.set_plain(True)
    try:
        preset = tiny_catalog.preset("digits-tiny")
        prior = preset.prior.model_copy(update={"options": {**preset.prior.options, "steps": 100}})
        trained_prior(plugins, preset.model_copy(update={"prior": prior}), load_split(plugins, preset), "tiny")
    finally:
        progress.set_plain(False)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("[tiny] training prior 'wgan-gp' on ") and err[0].endswith(": started (100 steps)"), err
    assert ": done, 100 steps in " in err[-1] and "loss" in err[-1], err
