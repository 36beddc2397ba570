"""Thread counts that degrade gracefully under load (core/threads.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from invertkit.core.errors import UsageError
from invertkit.core.threads import choose_threads


@given(cores=st.integers(1, 256), load=st.floats(0.0, 1000.0))
def test_threads_are_the_free_cores_and_at_least_one(cores: int, load: float) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("INVERTKIT_THREADS", raising=False)
        n = choose_threads(cores, load)
    assert 1 <= n <= cores
    assert n == max(1, cores - round(load))


def test_an_idle_machine_gets_every_core_and_a_busy_one_gets_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INVERTKIT_THREADS", raising=False)
    assert choose_threads(2, 0.1) == 2
    assert choose_threads(2, 6.0) == 1  # load average 6 on 2 cores: the case that took the bench 10x its time


def test_the_environment_overrides_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVERTKIT_THREADS", "3")
    assert choose_threads(2, 6.0) == 3
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv("INVERTKIT_THREADS", bad)
        with pytest.raises(UsageError, match="INVERTKIT_THREADS"):
            choose_threads()
