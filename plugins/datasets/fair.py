"""``fair``: Fair's extramarital-affairs survey (Fair, *J. Political Economy* 1978; the 1974 Redbook survey of
6,366 married women), read from the CSV that ships inside statsmodels' wheel (``statsmodels/datasets/fair/fair.csv``;
``pip install statsmodels``, no network, statsmodels itself is never imported).

Records for attribute inference. The label is the respondent's rating of her marriage in three classes, as the GSS
``hapmar`` label of Mehnaz et al. (USENIX Security 2022) and Fredrikson et al. (CCS 2015): 0 = very poor, poor or fair
(1-3), 1 = good (4), 2 = very good (5). The **sensitive attribute** is whether she had an extramarital affair
(``affairs > 0``: no / yes, 32 % yes): the GSS/FiveThirtyEight "have you had an affair / cheated" question those papers
infer, and an attribute a survey respondent would not want inferred from a model trained on her answers. It predicts
the label (a very good marriage: 51 % without an affair, 24 % with one), so a model that learnt it leaks it.

Columns (each in ``[0, 1]``): age, years married, children, religiousness, education (min-max over the survey's own
codes), her occupation and her husband's (one-hot, 6 codes each), then the sensitive block ``affair=no``,
``affair=yes`` (one-hot). ``part`` splits the records, seeded, into two disjoint halves: ``private`` (the target's
training and test records) and ``public`` (the attacker's data: the same population, other people, sensitive values
included, as the papers' marginal prior and confusion statistics assume); ``all`` is every record.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from invertkit.core.data import DatasetAdapter
from invertkit.core.data.records import RecordSchema
from invertkit.core.errors import DataNotFoundError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig

#: numeric columns and their ranges in the survey's codes (min-max scaled to [0, 1])
NUMERIC = {"age": (17.5, 42.0), "yrs_married": (0.5, 23.0), "children": (0.0, 5.5), "religious": (1.0, 4.0),
           "educ": (9.0, 20.0)}
OCCUPATIONS = 6
SENSITIVE = ("no", "yes")


def _columns() -> tuple[str, ...]:
    cols = list(NUMERIC)
    cols += [f"occupation={k}" for k in range(1, OCCUPATIONS + 1)]
    cols += [f"occupation_husb={k}" for k in range(1, OCCUPATIONS + 1)]
    cols += [f"affair={v}" for v in SENSITIVE]
    return tuple(cols)


def bundled_csv() -> Path | None:
    """statsmodels' copy of the data, located without importing statsmodels; ``None`` when it is not installed."""
    spec = importlib.util.find_spec("statsmodels")
    for base in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(base) / "datasets" / "fair" / "fair.csv"
        if path.is_file():
            return path
    return None


def encode(rows: list[dict[str, str]]) -> tuple[Tensor, Tensor]:
    """Feature vectors (``(N, 19)``, columns as :func:`_columns`) and the three-class marriage rating."""
    feats, labels = [], []
    for r in rows:
        v = [(float(r[k]) - lo) / (hi - lo) for k, (lo, hi) in NUMERIC.items()]
        for field in ("occupation", "occupation_husb"):
            one = [0.0] * OCCUPATIONS
            one[int(float(r[field])) - 1] = 1.0
            v += one
        affair = float(r["affairs"]) > 0
        v += [0.0, 1.0] if affair else [1.0, 0.0]
        feats.append(v)
        rate = int(float(r["rate_marriage"]))
        labels.append(0 if rate <= 3 else rate - 3)
    return torch.tensor(feats, dtype=torch.float32).clamp(0, 1), torch.tensor(labels, dtype=torch.long)


class Fair(DatasetAdapter):
    name = "fair"
    summary = ("Fair's affairs survey (6,366 records, bundled in statsmodels): marriage rating (3 classes) from "
               "19 columns; sensitive attribute: had an affair")
    paper = "https://doi.org/10.1086/260646"
    layout = "fair.csv (statsmodels' copy: pip install statsmodels; or a root folder holding fair.csv)"

    class Config(ComponentConfig):
        part: Literal["all", "private", "public"] = Field(
            "all", description="which records: every one, or one of two disjoint seeded halves (the target's "
                               "private records, the attacker's public ones)")
        public_fraction: float = Field(0.5, gt=0, lt=1, description="the share of records in the public half")
        split_seed: int = Field(0, description="seed of the private/public split")

    def load(self, root: str | None = None, **options: object) -> tuple[Tensor, Tensor]:
        cfg = self.options(options)
        path = Path(root).expanduser() / "fair.csv" if root else bundled_csv()
        if path is None or not path.is_file():
            raise DataNotFoundError(f"dataset 'fair' not found (looked in {path or 'the statsmodels package'}); "
                                    f"expected layout: {self.layout}")
        with open(path, newline="") as fh:
            x, y = encode(list(csv.DictReader(fh)))
        if cfg.part == "all":
            return x, y
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(cfg.split_seed)))
        n_public = int(round(len(x) * cfg.public_fraction))
        idx = perm[:n_public] if cfg.part == "public" else perm[n_public:]
        idx = idx.sort().values
        return x[idx], y[idx]

    def schema(self, **options: object) -> RecordSchema:
        self.options(options)
        cols = _columns()
        return RecordSchema(columns=cols, attribute="affair", values=SENSITIVE, start=len(cols) - len(SENSITIVE))


@hookimpl
def invertkit_register_datasets(register) -> None:  # noqa: ANN001 - a Registrar
    register(Fair)
