"""Records: tabular data as invertkit holds it, and what an attribute-inference attacker knows of it.

A records dataset adapter's ``load`` gives ``(N, D)`` float feature vectors (each value in ``[0, 1]``) and
``long`` labels; its ``schema()`` gives a :class:`RecordSchema`: the name of every column and the one categorical
attribute that is *sensitive*, one-hot encoded in the columns ``start .. start + len(values)``. The schema is
public (an API's input format); the sensitive value of a private record is what an attribute-inference attack
infers (Fredrikson et al., USENIX Security 2014; Mehnaz et al., USENIX Security 2022): the attacker knows every
other attribute of the record and its label, never the sensitive columns (:meth:`RecordSchema.mask`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RecordSchema"]


@dataclass(frozen=True)
class RecordSchema:
    """The columns of a records dataset and its sensitive attribute (a one-hot block of ``len(values)`` columns
    from ``start``)."""

    columns: tuple[str, ...]
    attribute: str
    values: tuple[str, ...]
    start: int

    def __post_init__(self) -> None:
        if len(self.values) < 2:
            raise ValueError(f"sensitive attribute '{self.attribute}' needs at least two values")
        if not 0 <= self.start <= len(self.columns) - len(self.values):
            raise ValueError(f"sensitive attribute '{self.attribute}': columns {self.start}..{self.stop} do not fit "
                             f"{len(self.columns)} columns")

    @property
    def stop(self) -> int:
        return self.start + len(self.values)

    @property
    def width(self) -> int:
        """``D``, the number of columns."""
        return len(self.columns)

    @property
    def num_values(self) -> int:
        return len(self.values)

    def mask(self, x: Tensor) -> Tensor:
        """``x`` with the sensitive columns zeroed (what the attacker knows of a record)."""
        out = x.clone()
        out[:, self.start : self.stop] = 0
        return out

    def fill(self, x: Tensor, value: int | Tensor) -> Tensor:
        """``x`` with the sensitive attribute set to ``value`` (one index for every row, or one per row)."""
        out = x.clone()
        out[:, self.start : self.stop] = 0
        v = torch.as_tensor(value, dtype=torch.long)
        if v.dim() == 0:
            out[:, self.start + int(v)] = 1
        else:
            out[torch.arange(len(out)), self.start + v.to(out.device)] = 1
        return out

    def decode(self, x: Tensor) -> Tensor:
        """The sensitive value of each row of ``x`` (the argmax of its one-hot block)."""
        return x[:, self.start : self.stop].argmax(dim=1)

    def known(self, x: Tensor) -> Tensor:
        """The columns other than the sensitive ones (the attacker's features of a record)."""
        return torch.cat([x[:, : self.start], x[:, self.stop :]], dim=1)

    def marginal(self, x: Tensor) -> Tensor:
        """The empirical distribution of the sensitive attribute over the rows of ``x`` (``num_values`` entries)."""
        counts = torch.bincount(self.decode(x), minlength=self.num_values).to(torch.float64)
        return counts / counts.sum().clamp_min(1.0)
