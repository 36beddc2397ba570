"""The bench: plan (cross product + capability filter) -> cells -> executor -> cache -> report."""

from invertkit.core.bench.plan import Cell, Plan, make_plan
from invertkit.core.bench.runner import run_bench, run_cell

__all__ = ["Cell", "Plan", "make_plan", "run_bench", "run_cell"]
