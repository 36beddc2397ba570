"""Peak GPU memory of a bench cell, in MiB (``torch.cuda.max_memory_allocated``: the most memory held by
tensors at once, the caching allocator's reserve not included).

The attack runs before any metric is built, so the runner measures it: it resets the peak counter
(``torch.cuda.reset_peak_memory_stats()``) before the attack and puts
``torch.cuda.max_memory_allocated() / 2**20`` into ``MetricContext.extras["peak_gpu_mib"]`` after it. This
metric reports that value; it is NaN on a CPU-only run (or when the runner did not measure it)."""

from __future__ import annotations

import math

from torch import Tensor

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.metric import Metric


class GPUMemory(Metric):
    name = "gpu-memory"
    needs = frozenset()
    paper = ""
    keys = ("peak_gpu_mib",)
    higher_is_better = {"peak_gpu_mib": False}  # a cost of the attack
    summary = "Peak GPU memory (MiB) allocated during the cell, as measured by the runner; NaN on the CPU."

    def reset(self) -> None:
        pass

    def update(self, images: Tensor, labels: Tensor) -> None:
        """The value does not depend on the reconstructions: nothing to accumulate."""

    def compute(self) -> dict[str, float]:
        value = self.ctx.extras.get("peak_gpu_mib")
        return {"peak_gpu_mib": float(value) if value is not None else math.nan}


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(GPUMemory)
