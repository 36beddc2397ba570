"""The plugin's own tests: invertkit's contract suites, run against this plugin's attack and defense.

    pip install -e . && python -m pytest tests
"""

from __future__ import annotations

from invertkit.core.testing.contracts import AttackContract, DefenseContract

from invertkit_example_plugin.attack import BestOfN
from invertkit_example_plugin.defense import Temperature


class TestBestOfN(AttackContract):
    attack_cls = BestOfN
    config = {"candidates": 8, "batch_size": 5}


class TestTemperature(DefenseContract):
    defense_cls = Temperature
    configs = [{}, {"temperature": 0.5}, {"temperature": 1.0}, {"temperature": 25.0}]
