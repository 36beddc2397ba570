"""How many intra-op threads torch uses for a bench, a run or a training: fair to whatever else the machine runs.

Torch's default is one thread per core, and its threads spin while they wait. On a small machine that other
work already keeps busy, they contend with that work and with each other: on 2 cores at load average 6, the
default bench took ten times its idle time. So invertkit takes the cores that are free when it starts: the
core count less the 1-minute load average (at least 1). ``INVERTKIT_THREADS`` overrides it.
"""

from __future__ import annotations

import os

from invertkit.core.errors import UsageError


def choose_threads(cores: int | None = None, load: float | None = None) -> int:
    """``INVERTKIT_THREADS`` if set; else ``cores - round(load)``, at least 1 (``cores``/``load`` default to
    this machine's CPU count and 1-minute load average)."""
    env = os.environ.get("INVERTKIT_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise UsageError(f"INVERTKIT_THREADS must be a positive integer, got '{env}'") from None
        if n < 1:
            raise UsageError(f"INVERTKIT_THREADS must be a positive integer, got '{env}'")
        return n
    cores = cores if cores is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else os.cpu_count() or 1)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # pragma: no cover - no load average on this platform
            load = 0.0
    return max(1, min(cores, cores - int(round(load))))


def apply_threads() -> int:
    """Set torch's intra-op threads to :func:`choose_threads` and return the number."""
    import torch

    n = choose_threads()
    torch.set_num_threads(n)
    return n
