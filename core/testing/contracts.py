"""Contract tests for plugins: subclass one, set a class attribute, and pytest runs the whole contract.

In the style of zarr's ``zarr.testing.store``: the base classes are *not* collected by pytest (their names do
not start with ``Test``); a subclass whose name does is::

    from invertkit.core.testing.contracts import DefenseContract

    class TestMyDefense(DefenseContract):
        defense_cls = MyDefense
        configs = [{}, {"strength": 0.9}]   # optional: each test draws one of these

    class TestMyAttack(AttackContract):
        attack_cls = MyAttack
        config = {"steps": 3}               # something that runs in well under a second

    class TestMyTarget(TargetContract):
        def make_target(self):
            return MyTarget(...)

Override the ``make_*`` methods to supply your own targets, priors or defense contexts. Every property
test uses hypothesis with at most :data:`MAX_EXAMPLES` examples and no deadline, so the contracts stay fast
on a CPU.

The suites live one per module (:mod:`~invertkit.core.testing.defense_contract`,
:mod:`~invertkit.core.testing.attack_contract`, :mod:`~invertkit.core.testing.target_contract`), their shared
settings and answer checks in :mod:`~invertkit.core.testing.checks` and :class:`TinyPrior` in
:mod:`~invertkit.core.testing.tiny`; import them all from here.
"""

from __future__ import annotations

from invertkit.core.testing.attack_contract import AttackContract
from invertkit.core.testing.checks import (
    MAX_EXAMPLES,
    QUERY_CAPABILITIES,
    QUERYING,
    BudgetCall,
    access_sets,
    ask,
    assert_distributions,
    check_budget,
    contract_settings,
    torch_threads,
)
from invertkit.core.testing.defense_contract import DefenseContract
from invertkit.core.testing.target_contract import TargetContract
from invertkit.core.testing.tiny import TinyPrior

__all__ = [
    "MAX_EXAMPLES",
    "QUERYING",
    "QUERY_CAPABILITIES",
    "AttackContract",
    "BudgetCall",
    "DefenseContract",
    "TargetContract",
    "TinyPrior",
    "access_sets",
    "ask",
    "assert_distributions",
    "check_budget",
    "contract_settings",
    "torch_threads",
]
